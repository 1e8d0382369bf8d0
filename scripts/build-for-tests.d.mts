/** Build `packageName` and its workspace dependencies through turbo. */
export declare function buildWithDependencies(packageName: string): void;
