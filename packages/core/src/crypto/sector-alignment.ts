/**
 * Encrypted images work in whole 512-byte sectors (QEMU sets the request alignment of an encrypted qcow2
 * image to its crypto sector size): a request that is not whole sectors has partial sectors to complete.
 */
import { SECTOR_BYTES } from "./sector-cipher";

/** True when [offset, +length) is whole sectors (a range ending at the end of the image may end mid-sector). */
export function isSectorAligned(offset: number, length: number, imageEnd: number): boolean {
  return offset % SECTOR_BYTES === 0 && ((offset + length) % SECTOR_BYTES === 0 || offset + length === imageEnd);
}
