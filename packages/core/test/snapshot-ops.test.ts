/**
 * Internal snapshots through the engine API against qemu-img snapshot: the same writes and snapshot
 * operations on two copies of one image; guest content, every snapshot's content (read back by qemu-img
 * convert -l), the snapshot list and qemu-img check must agree after each step.
 */
import { copyFileSync, readFileSync } from "node:fs";
import { afterAll, describe, expect, it } from "vitest";
import { Qcow2Image, applySnapshot, createSnapshot, deleteSnapshot, listSnapshots } from "../src/index";
import { openImage } from "../src/node";
import { qemu, qemuStatus, rng, tempDir } from "./helpers";

const tmp = tempDir("qcowkit-snap-");
afterAll(tmp.cleanup);

async function qcow2(path: string): Promise<Qcow2Image> {
  const img = await openImage(path);
  if (!(img instanceof Qcow2Image)) throw new Error("not qcow2");
  return img;
}

function flat(path: string, snapshot?: string): Buffer {
  const out = `${path}.${snapshot ?? "active"}.raw`;
  qemu("qemu-img", ["convert", "-U", ...(snapshot ? ["-l", `snapshot.name=${snapshot}`] : []), "-O", "raw", path, out]);
  return readFileSync(out);
}

function snapshotNames(path: string): string[] {
  const info = JSON.parse(qemu("qemu-img", ["info", "-U", "--output=json", path])) as { snapshots?: Array<{ name: string; id: string }> };
  return (info.snapshots ?? []).map((s) => `${s.id}:${s.name}`);
}

describe("internal snapshots", () => {
  it("create, apply and delete with random writes in between match qemu-img", async () => {
    const q = tmp.path("q.qcow2");
    const o = tmp.path("o.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", "cluster_size=4k", q, "8M"]);
    qemu("qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -c -P 2 2M 64k", "-c", "write -z 3M 64k", q]);
    copyFileSync(q, o);
    const r = rng(7);
    const names: string[] = [];
    for (let step = 0; step < 24; step++) {
      const k = r();
      const writes: Array<[number, number, number]> = [];
      for (let i = 0; i < 3; i++) writes.push([Math.floor(r() * 2000) * 4096, (1 + Math.floor(r() * 20)) * 512, 1 + Math.floor(r() * 250)]);
      qemu("qemu-io", [...writes.flatMap(([off, len, p]) => ["-c", `write -P ${p} ${off} ${len}`]), q]);
      let img = await qcow2(o);
      for (const [off, len, p] of writes) await img.write(off, new Uint8Array(len).fill(p));
      if (k < 0.45 || names.length === 0) {
        const name = `s${step}`;
        qemu("qemu-img", ["snapshot", "-c", name, q]);
        await createSnapshot(img, name);
        names.push(name);
      } else if (k < 0.75) {
        const name = names[Math.floor(r() * names.length)]!;
        qemu("qemu-img", ["snapshot", "-a", name, q]);
        await applySnapshot(img, name);
      } else {
        const name = names.splice(Math.floor(r() * names.length), 1)[0]!;
        qemu("qemu-img", ["snapshot", "-d", name, q]);
        await deleteSnapshot(img, { name });
      }
      expect(listSnapshots(img).map((s) => s.name)).toEqual(names);
      await img.close();
      img = undefined as unknown as Qcow2Image;
      expect(qemuStatus("qemu-img", ["check", o]).status).toBe(0);
      expect(snapshotNames(o)).toEqual(snapshotNames(q));
      expect(flat(o).equals(flat(q))).toBe(true);
    }
    for (const name of names) expect(flat(o, name).equals(flat(q, name))).toBe(true);
  });

  it("a snapshot keeps its content while the image changes, and apply brings it back", async () => {
    const path = tmp.path("keep.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", path, "4M"]);
    const img = await qcow2(path);
    await img.write(0, new Uint8Array(65536).fill(5));
    const info = await createSnapshot(img, "base", { dateSeconds: 1000, dateNanoseconds: 5000 });
    expect(info).toMatchObject({ id: "1", name: "base", dateSeconds: 1000, dateNanoseconds: 5000, diskSize: 4 * 1024 * 1024, vmStateSize: 0 });
    await img.write(0, new Uint8Array(4096).fill(6));
    await img.close();
    expect(flat(path, "base").subarray(0, 65536).every((b) => b === 5)).toBe(true);
    expect(flat(path)[0]).toBe(6);
    const again = await qcow2(path);
    await applySnapshot(again, "1");
    const buf = new Uint8Array(65536);
    await again.read(0, buf);
    expect(buf.every((b) => b === 5)).toBe(true);
    await again.close();
    expect(qemuStatus("qemu-img", ["check", path]).status).toBe(0);
  });

  it("refuses every operation on an image with an external data file (ENOTSUP)", async () => {
    const path = tmp.path("df.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", "-o", `data_file=${tmp.path("df.raw")}`, path, "1M"]);
    const img = await qcow2(path);
    await expect(createSnapshot(img, "x")).rejects.toMatchObject({ errno: "ENOTSUP" });
    await expect(applySnapshot(img, "x")).rejects.toMatchObject({ errno: "ENOTSUP" });
    await expect(deleteSnapshot(img, { name: "x" })).rejects.toMatchObject({ errno: "ENOTSUP" });
    expect(listSnapshots(img)).toEqual([]);
    await img.close();
  });

  it("unknown snapshots are ENOENT", async () => {
    const path = tmp.path("none.qcow2");
    qemu("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
    const img = await qcow2(path);
    await expect(applySnapshot(img, "nope")).rejects.toMatchObject({ errno: "ENOENT" });
    await expect(deleteSnapshot(img, { name: "nope" })).rejects.toMatchObject({ errno: "ENOENT" });
    await img.close();
  });
});
