// Paired, alternating benchmark rounds, shared by the bench rows that report QEMU's own noise band
// (scripts/bench/compressed-encrypted.mjs, scripts/bench/streams.mjs).
// One uncounted warm-up per tool, then `rounds` rounds whose order alternates, each timing QEMU twice and
// qcowkit once. Returned: the times, the medians, the ratio of the medians (QEMU time / qcowkit time: >= 1
// means qcowkit is at least as fast), each round's own ratio at its worst and best, and the noise band: the
// min-max of QEMU's two runs' ratio in the same rounds (a ratio inside it cannot be told from QEMU against
// itself).

/** `prepare` runs before every run; `run(cmd, args, watch)` resolves with `{ ms }`. */
export async function pairedRounds({ rounds, run, median, prepare, qemuCmd, oursCmd }) {
  const q = [];
  const q2 = [];
  const o = [];
  const once = async (cmd) => {
    await prepare();
    return (await run(cmd[0], cmd[1], false)).ms;
  };
  await once(qemuCmd);
  await once(oursCmd);
  for (let r = 0; r < rounds; r++) {
    if (r % 2 === 0) {
      q.push(await once(qemuCmd));
      o.push(await once(oursCmd));
      q2.push(await once(qemuCmd));
    } else {
      o.push(await once(oursCmd));
      q.push(await once(qemuCmd));
      q2.push(await once(qemuCmd));
    }
  }
  const noise = q.map((t, i) => t / q2[i]);
  const perRound = o.map((t, i) => (q[i] + q2[i]) / 2 / t);
  const qm = median([...q, ...q2]);
  const om = median(o);
  return {
    q,
    q2,
    o,
    qemuMs: qm,
    oursMs: om,
    ratio: qm / om,
    worst: Math.min(...perRound),
    best: Math.max(...perRound),
    noise: [Math.min(...noise), Math.max(...noise)],
  };
}
