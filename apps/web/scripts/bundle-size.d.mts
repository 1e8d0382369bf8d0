export interface BundleSizes {
  minified: number;
  gzipped: number;
}
export function measureCoreBundle(): Promise<{ initial: BundleSizes; lazy: BundleSizes; nodeReferences: number }>;
