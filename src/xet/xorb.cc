// Filled in by the xorb work; see include/bucketfs/xet/xorb.h.
