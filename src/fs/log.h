#pragma once
// One-line log messages of the mount daemon, on stderr (the daemon points stderr at its log
// file). Messages never contain tokens or signed URLs.
#include <string>

namespace bucketfs::fs {

// Writes "<UTC time> bucketfs[pid]: <message>\n" in one write(2).
void log_line(const std::string& message);

}  // namespace bucketfs::fs
