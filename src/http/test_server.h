#pragma once
// Test support for http/ tests: bucketfs-server's HTTP layer on 127.0.0.1 with a per-test handler,
// counting requests, distinct client connections (peer addresses) and concurrency, plus a gate that
// lets handlers block until the test (or teardown) opens it.

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <span>
#include <string>

#include "bucketfs/http/http.h"
#include "http_server.h"

namespace bucketfs::http {
namespace srv = bucketfs::server;
}

namespace bucketfs::http::testing {

using namespace std::chrono_literals;

// Opens once; waiters block until then (or until their timeout).
class Gate {
 public:
  void open() {
    std::lock_guard lock(mutex_);
    open_ = true;
    cv_.notify_all();
  }
  bool wait(std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [this] { return open_; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

class TestServer {
 public:
  using Handler = std::function<srv::HttpResponse(srv::HttpRequest& request)>;

  explicit TestServer(Handler handler);
  ~TestServer();
  TestServer(const TestServer&) = delete;
  TestServer& operator=(const TestServer&) = delete;

  std::string url(std::string_view path) const { return base_ + std::string(path); }
  int requests() const { return requests_.load(); }
  int max_in_flight() const { return max_in_flight_.load(); }
  std::set<std::string> peers() const {
    std::lock_guard lock(mutex_);
    return peers_;
  }

  Gate gate;  // for handlers that must block

 private:
  srv::HttpResponse handle(srv::HttpRequest& request);

  Handler handler_;
  std::unique_ptr<srv::HttpServer> server_;
  std::string base_;
  std::atomic<int> requests_{0};
  std::atomic<int> in_flight_{0};
  std::atomic<int> max_in_flight_{0};
  mutable std::mutex mutex_;
  std::set<std::string> peers_;
};

// A port on 127.0.0.1 that nobody listens on (bound, then closed).
inline int closed_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  socklen_t length = sizeof address;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

inline std::string random_text(std::size_t size, unsigned seed) {
  std::mt19937 engine(seed);
  std::string text(size, '\0');
  for (char& c : text) c = static_cast<char>('a' + engine() % 26);
  return text;
}

inline Error make_error(ErrorKind kind, int status = 0, std::string route = "", std::string message = "") {
  Error error;
  error.kind = kind;
  error.status = status;
  error.route = std::move(route);
  error.message = std::move(message);
  return error;
}

inline std::span<const std::byte> as_bytes(std::string_view text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

inline std::string to_string(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

}  // namespace bucketfs::http::testing
