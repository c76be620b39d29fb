#include "xet_commands.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bucketfs/xet/chunker.h"
#include "bucketfs/xet/hash.h"

namespace bucketfs::cli {
namespace {

// Owns a file descriptor opened for reading; closes it unless it is standard input.
class InputFile {
 public:
  explicit InputFile(int fd, bool owned) : fd_(fd), owned_(owned) {}
  InputFile(const InputFile&) = delete;
  InputFile& operator=(const InputFile&) = delete;
  ~InputFile() {
    if (owned_ && fd_ >= 0) ::close(fd_);
  }
  int fd() const { return fd_; }

 private:
  int fd_;
  bool owned_;
};

// Prints "<length> <hash>" per chunk and "file <hash>" for `path` ("-" is stdin), reading it in
// fixed-size pieces so memory stays constant whatever the file size.
int print_chunks(const std::string& path) {
  const bool is_stdin = path == "-";
  const int fd = is_stdin ? STDIN_FILENO : ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    std::fprintf(stderr, "bucketfs: cannot open %s: %s\n", path.c_str(), std::strerror(errno));
    return 1;
  }
  InputFile input(fd, !is_stdin);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);

  constexpr std::size_t kBufferSize = 1 << 20;
  std::vector<std::byte> buffer(kBufferSize);
  xet::ChunkHashStream stream;
  xet::AggregatedHasher file_tree;
  auto emit = [&](const xet::HashAndSize& chunk) {
    std::printf("%llu %s\n", static_cast<unsigned long long>(chunk.size), chunk.hash.to_string().c_str());
    file_tree.add(chunk);
  };
  for (;;) {
    const ssize_t got = ::read(input.fd(), buffer.data(), buffer.size());
    if (got < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "bucketfs: cannot read %s: %s\n", path.c_str(), std::strerror(errno));
      return 1;
    }
    if (got == 0) break;
    for (const auto& chunk : stream.update(xet::ByteSpan(buffer.data(), static_cast<std::size_t>(got)))) {
      emit(chunk);
    }
  }
  if (auto last = stream.finish()) emit(*last);

  // The file hash is the aggregated root keyed with a zero salt; an empty file's hash is zero.
  const bool empty = file_tree.leaf_count() == 0;
  const xet::Hash root = file_tree.finish();
  const xet::Hash file_hash = empty ? xet::Hash{} : xet::file_hash_from_root(root);
  std::printf("file %s\n", file_hash.to_string().c_str());
  if (std::fflush(stdout) != 0) {
    std::fprintf(stderr, "bucketfs: cannot write output: %s\n", std::strerror(errno));
    return 1;
  }
  return 0;
}

}  // namespace

void add_xet_commands(CLI::App& app) {
  auto* xet = app.add_subcommand("xet", "Inspect Xet objects: chunk boundaries and hashes");
  xet->require_subcommand(1);

  auto* chunks = xet->add_subcommand("chunks",
      "Print each chunk as '<length> <chunk-hash>' and a last line 'file <file-hash>'");
  auto path = std::make_shared<std::string>();
  chunks->add_option("FILE", *path, "File to chunk, or - for standard input")->required();
  chunks->callback([path] {
    const int status = print_chunks(*path);
    if (status != 0) throw CLI::RuntimeError(status);
  });
}

}  // namespace bucketfs::cli
