/**
 * Helpers for testing code that uses byte stores: a store that injects faults and loses unflushed writes on a
 * simulated crash, and a seeded random number generator for reproducible test data. Not for production use.
 *
 * @module @qcowkit/datafile/testing
 */
export {
  FaultInjectingStore,
  type CountedOperation,
  type FaultInjectingStoreOptions,
  type UnflushedKeepOptions,
} from "./fault-store";
export { seededRandom } from "./seeded-random";
