// Filled in by the compression work; see include/bucketfs/xet/compression.h.
