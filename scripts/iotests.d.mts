/** Types of scripts/iotests.mjs for the tests that import it. */
export declare const ALL_TESTS: string;
export declare function ciTests(): string[];
export declare function resultsOfLine(line: string): string[];
export declare function runIotests(options: unknown): Promise<unknown>;
