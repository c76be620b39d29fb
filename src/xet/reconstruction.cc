// Filled in by the reconstruction work; see include/bucketfs/xet/reconstruction.h.
