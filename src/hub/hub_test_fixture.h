#pragma once
// Test support for hub/: a real bucketfs-server in-process on 127.0.0.1 (its own temp data dir,
// a tokens file, a controllable clock), the real CurlTransport, and a forwarding transport that
// counts requests and can inject faults around it.

#include <atomic>
#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "bucket_server.h"
#include "bucketfs/http/curl_transport.h"
#include "bucketfs/http/http.h"
#include "bucketfs/hub/hub_client.h"
#include "http_server.h"
#include "temp_dir.h"

namespace bucketfs::hub::testing {

inline constexpr const char* kAliceWrite = "hf_alice_write_0123456789abcdef";
inline constexpr const char* kAliceRead = "hf_alice_read_0123456789abcdef";
inline constexpr const char* kBobWrite = "hf_bob_write_0123456789abcdef";

inline std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Counts requests and, when `fault` returns an error for a request, answers with it instead of
// forwarding (fault injection around the real transport).
class CountingTransport : public http::ForwardingTransport {
 public:
  using ForwardingTransport::ForwardingTransport;
  using Fault = std::function<std::optional<http::Error>(const http::Request&)>;

  http::Result<http::Response> perform(const http::Request& request, const http::CancellationToken* cancel) override {
    {
      std::lock_guard lock(mutex_);
      requests_.push_back(request.method + " " + request.url);
      bodies_.emplace_back(reinterpret_cast<const char*>(request.body.data()), request.body.size());
      authorizations_.push_back(request.headers.get("Authorization").has_value());
    }
    if (delay_) delay_(request);
    if (fault_) {
      if (auto error = fault_(request)) return std::unexpected(*error);
    }
    return ForwardingTransport::perform(request, cancel);
  }

  void set_fault(Fault fault) { fault_ = std::move(fault); }
  void set_delay(std::function<void(const http::Request&)> delay) { delay_ = std::move(delay); }

  // Requests whose "METHOD URL" contains `needle`.
  std::size_t count(const std::string& needle) const {
    std::lock_guard lock(mutex_);
    std::size_t n = 0;
    for (const auto& r : requests_) n += r.find(needle) != std::string::npos;
    return n;
  }
  std::vector<std::string> requests() const {
    std::lock_guard lock(mutex_);
    return requests_;
  }
  std::string last_body() const {
    std::lock_guard lock(mutex_);
    return bodies_.empty() ? std::string() : bodies_.back();
  }
  bool last_had_authorization() const {
    std::lock_guard lock(mutex_);
    return !authorizations_.empty() && authorizations_.back();
  }
  void clear() {
    std::lock_guard lock(mutex_);
    requests_.clear();
    bodies_.clear();
    authorizations_.clear();
  }

 private:
  mutable std::mutex mutex_;
  std::vector<std::string> requests_;
  std::vector<std::string> bodies_;
  std::vector<bool> authorizations_;
  Fault fault_;
  std::function<void(const http::Request&)> delay_;
};

// A bucketfs-server on 127.0.0.1:<free port>. Namespaces: alice (write + read tokens), bob.
class ServerFixture : public ::testing::Test {
 protected:
  void SetUp() override {
    {
      std::ofstream tokens(dir_ / "tokens");
      tokens << kAliceWrite << " write alice\n" << kAliceRead << " read alice\n" << kBobWrite << " write bob\n";
    }
    server_clock_ms_.store(wall_ms());
    server::BucketServerOptions options;
    options.data_dir = dir_ / "data";
    options.tokens_file = dir_ / "tokens";
    options.cas_token_lifetime_seconds = token_lifetime_seconds();
    options.signed_url_lifetime_seconds = token_lifetime_seconds();
    options.now_ms = [this] { return server_clock_ms_.load(); };
    auto opened = server::BucketServer::open(options);
    ASSERT_TRUE(opened) << opened.error();
    server_ = std::move(*opened);
    server::HttpServerOptions http_options;
    http_options.address = "127.0.0.1";
    http_options.port = 0;
    http_options.stop_timeout = std::chrono::milliseconds(2000);
    auto* app = server_.get();
    http_ = std::make_unique<server::HttpServer>(
        http_options, [app](const server::HttpRequest& request) { return app->decide(request); },
        [app](server::HttpRequest&& request) { return app->handle(std::move(request)); });
    auto started = http_->start();
    ASSERT_TRUE(started) << started.error();
    base_url_ = "http://127.0.0.1:" + std::to_string(http_->port());
    server_->set_base_url(base_url_);
  }

  void TearDown() override {
    if (http_) http_->stop();
    http_.reset();
    server_.reset();
  }

  virtual std::int64_t token_lifetime_seconds() const { return 3600; }

  HubSettings settings(std::optional<std::string> token) const {
    HubSettings out;
    out.endpoint = base_url_;
    out.token = std::move(token);
    out.token_origin = out.token ? TokenOrigin::env_hf_token : TokenOrigin::none;
    return out;
  }

  void advance_server_clock(std::chrono::seconds by) { server_clock_ms_ += by.count() * 1000; }

  bucketfs::testing::TempDir dir_{"bucketfs-hub-test"};
  std::atomic<std::int64_t> server_clock_ms_{0};
  std::unique_ptr<server::BucketServer> server_;
  std::unique_ptr<server::HttpServer> http_;
  std::string base_url_;
  http::CurlTransport curl_;
  CountingTransport transport_{curl_};
};

}  // namespace bucketfs::hub::testing
