#include "xorb_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>

namespace bucketfs::server {
namespace {

std::string errno_text(const std::string& what) { return what + ": " + std::strerror(errno); }

bool fsync_path(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  const bool ok = ::fsync(fd) == 0;
  ::close(fd);
  return ok;
}

}  // namespace

std::expected<XorbStore, std::string> XorbStore::open(const std::string& data_dir) {
  const std::string root = data_dir + "/xorbs";
  if (::mkdir(root.c_str(), 0700) != 0 && errno != EEXIST) return std::unexpected(errno_text("cannot create " + root));
  std::error_code error;
  for (auto it = std::filesystem::recursive_directory_iterator(root, error);
       !error && it != std::filesystem::recursive_directory_iterator(); it.increment(error)) {
    if (it->is_regular_file() && it->path().filename().string().starts_with(".tmp-")) {
      std::filesystem::remove(it->path(), error);
    }
  }
  return XorbStore(root);
}

std::string XorbStore::path_of(const xet::Hash& xorb_hash) const {
  const std::string hex = xorb_hash.to_string();
  return root_ + "/" + hex.substr(0, 2) + "/" + hex;
}

bool XorbStore::contains(const xet::Hash& xorb_hash) const {
  struct stat info;
  return ::stat(path_of(xorb_hash).c_str(), &info) == 0;
}

std::expected<bool, std::string> XorbStore::put(const xet::Hash& xorb_hash, xet::ByteSpan bytes) {
  const std::string final_path = path_of(xorb_hash);
  if (contains(xorb_hash)) return false;
  const std::string folder = final_path.substr(0, final_path.rfind('/'));
  if (::mkdir(folder.c_str(), 0700) != 0 && errno != EEXIST) return std::unexpected(errno_text("cannot create " + folder));
  static std::atomic<std::uint64_t> sequence{0};
  const std::string temporary = folder + "/.tmp-" + std::to_string(::getpid()) + "-" + std::to_string(sequence++);
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return std::unexpected(errno_text("cannot create " + temporary));
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t wrote = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (wrote < 0) {
      if (errno == EINTR) continue;
      const auto message = errno_text("cannot write " + temporary);
      ::close(fd);
      ::unlink(temporary.c_str());
      return std::unexpected(message);
    }
    done += static_cast<std::size_t>(wrote);
  }
  if (::fsync(fd) != 0) {
    const auto message = errno_text("cannot sync " + temporary);
    ::close(fd);
    ::unlink(temporary.c_str());
    return std::unexpected(message);
  }
  ::close(fd);
  if (::rename(temporary.c_str(), final_path.c_str()) != 0) {
    const auto message = errno_text("cannot rename into " + final_path);
    ::unlink(temporary.c_str());
    return std::unexpected(message);
  }
  if (!fsync_path(folder)) return std::unexpected(errno_text("cannot sync " + folder));
  return true;
}

}  // namespace bucketfs::server
