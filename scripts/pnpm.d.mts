export declare const PNPM_VERSION: string;
/** The command (and leading arguments) that runs pnpm on this machine. */
export declare function pnpmCommand(): string[];
