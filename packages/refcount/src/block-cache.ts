/**
 * A bounded write-back cache of refcount blocks, keyed by refcount block index. Least recently used
 * clean blocks are dropped when the cache is over capacity; dirty blocks are written back by the owner
 * (`Refcounts.writeBack`) or, when the cache is full of dirty blocks, through the `evictDirty` hook.
 */
export interface CachedBlock {
  /** Index of the block in the refcount table. */
  blockIndex: number;
  /** Host offset of the block in the qcow2 file. */
  hostOffset: number;
  bytes: Uint8Array;
  dirty: boolean;
}

export class BlockCache {
  private readonly blocks = new Map<number, CachedBlock>();

  constructor(readonly capacity: number) {}

  get(blockIndex: number): CachedBlock | undefined {
    const b = this.blocks.get(blockIndex);
    if (b) {
      // refresh LRU position
      this.blocks.delete(blockIndex);
      this.blocks.set(blockIndex, b);
    }
    return b;
  }

  put(block: CachedBlock): void {
    this.blocks.delete(block.blockIndex);
    this.blocks.set(block.blockIndex, block);
  }

  delete(blockIndex: number): void {
    this.blocks.delete(blockIndex);
  }

  /** Least recently used blocks beyond capacity, oldest first (the caller writes dirty ones, then drops). */
  overflow(): CachedBlock[] {
    const extra = this.blocks.size - this.capacity;
    if (extra <= 0) return [];
    const out: CachedBlock[] = [];
    for (const b of this.blocks.values()) {
      if (out.length >= extra) break;
      out.push(b);
    }
    return out;
  }

  dirtyBlocks(): CachedBlock[] {
    return [...this.blocks.values()].filter((b) => b.dirty).sort((a, b) => a.hostOffset - b.hostOffset);
  }

  get hasDirty(): boolean {
    for (const b of this.blocks.values()) if (b.dirty) return true;
    return false;
  }

  clear(): void {
    this.blocks.clear();
  }

  get size(): number {
    return this.blocks.size;
  }
}
