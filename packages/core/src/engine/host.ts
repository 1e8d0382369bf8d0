/**
 * What every part of the engine reads from the image it works for. Each part's own host interface adds the
 * few other parts and callbacks it needs.
 */
import type { BlockImage } from "../block-image";
import type { ImageEncryption } from "../crypto/image-encryption";
import type { MetadataOwner } from "../metadata/owner";

export interface EngineHost {
  readonly md: MetadataOwner;
  readonly clusterBits: number;
  readonly clusterSize: number;
  readonly extendedL2: boolean;
  readonly hasDataFile: boolean;
  readonly virtualSize: number;
  readonly backing: BlockImage | null;
  readonly encryption: ImageEncryption | undefined;
}
