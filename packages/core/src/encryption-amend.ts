/**
 * qemu-img amend's encryption options: LUKS key slot management on a qcow2 image with LUKS encryption
 * (`encrypt.state=...`) or on a luks image (`state=...`), with QEMU's refusals for other images.
 */
import { Qcow2Error } from "@qcowkit/spec";
import type { BlockImage } from "./block-image";
import { amendLuksKeyslots, type LuksAmendOptions } from "./crypto/luks-keyslots";
import { LuksImage } from "./luks-image";
import { Qcow2Image } from "./qcow2-image";

/**
 * Add or erase key slots of `image` (opened read-write with its key); `force`: qemu-img amend --force. `o` may be
 * a function, called once the image is known to have LUKS key slots (QEMU checks that before the options).
 */
export async function amendEncryption(image: BlockImage, options: LuksAmendOptions | (() => LuksAmendOptions), force = false): Promise<void> {
  const resolve = () => (typeof options === "function" ? options() : options);
  if (image instanceof LuksImage) return image.amendKeyslots(resolve(), force);
  if (!(image instanceof Qcow2Image)) {
    throw new Qcow2Error("NOT_SUPPORTED", `Format driver '${image.format}' does not support option amendment`, { errno: "ENOTSUP" });
  }
  const encryption = image.encryption;
  if (!encryption) throw new Qcow2Error("INVALID_ARGUMENT", "Can't amend encryption options - encryption not present");
  if (encryption.format !== "luks") throw new Qcow2Error("NOT_SUPPORTED", "Only LUKS encryption options can be amended", { errno: "ENOTSUP" });
  if (!encryption.luksAccess) throw new Qcow2Error("INTERNAL", "Encrypted image opened without I/O");
  if (image.readOnly) throw new Qcow2Error("READ_ONLY", "Image is read-only", { errno: "EPERM" });
  await amendLuksKeyslots(encryption.luksAccess, resolve(), force);
}
