/**
 * The process's C heap (glibc malloc), where OpenSSL, SQLite and the addon allocate: statistics, and handing free
 * memory back to the kernel. Both are null where the C library offers no such call (non-glibc builds).
 */
import { native } from "./load.js";

/** C heap bytes over all arenas: `inUse` by live allocations (including large ones mmapped on their own). */
export interface MallocInfo {
  inUse: number;
  /** Free in the arenas: kept mapped by malloc for reuse, counted in RSS once touched. */
  free: number;
  mmapped: number;
}

interface Addon {
  mallocInfo(): MallocInfo | null;
  trimMemory(): boolean | null;
}

/** Current C heap statistics (mallinfo2), or null without glibc ≥ 2.33. */
export function mallocInfo(): MallocInfo | null {
  return native<Addon>().mallocInfo();
}

/**
 * Returns the free pages of every malloc arena to the kernel (malloc_trim(0)); true if any were released, null
 * without glibc. Costs time in proportion to the heap (milliseconds at hundreds of MB): call it off the packet
 * path, when the process is quiet.
 */
export function trimMemory(): boolean | null {
  return native<Addon>().trimMemory();
}
