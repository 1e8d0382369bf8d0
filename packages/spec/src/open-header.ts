/**
 * Decode and validate cluster 0 in exactly the order QEMU 7.2's qcow2_do_open checks it, so that an image
 * with several faults is refused with the message QEMU gives for it.
 */
import { zeroPadded } from "./bytes";
import { scanExtensionArea } from "./extensions";
import { decodeHeader } from "./header";
import { decodeBackingFileName, extensionAreaEnd, type ImageHeader } from "./image-header";
import {
  headerWarnings,
  validateDataFileAndCrypto,
  validateHeaderFields,
  validateImageSize,
  type HeaderValidationOptions,
  type HeaderValidationResult,
} from "./validate";

export interface OpenedImageHeader extends HeaderValidationResult {
  image: ImageHeader;
}

/** `bytes` holds the first cluster of the file (bytes past its end read as zeros). */
export function openImageHeader(bytes: Uint8Array, opts: HeaderValidationOptions): OpenedImageHeader {
  const header = decodeHeader(bytes);
  const cluster0 = zeroPadded(bytes, 2 ** header.clusterBits);
  const area = scanExtensionArea(cluster0, header.headerLength, extensionAreaEnd(header), header);
  // With unknown incompatible bits QEMU names them from the feature table read up to the first bad extension.
  validateHeaderFields(header, () => area.extensions.featureTable, opts);
  if (area.error) throw area.error;
  const image: ImageHeader = { header, extensions: area.extensions };
  validateDataFileAndCrypto(image, opts);
  const backingFile = decodeBackingFileName(cluster0, header);
  if (backingFile !== undefined) image.backingFile = backingFile;
  validateImageSize(header);
  return { image, ...headerWarnings(image) };
}
