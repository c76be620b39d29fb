// Test support: see test_server.h.
#include "test_server.h"

namespace bucketfs::http::testing {

TestServer::TestServer(Handler handler) : handler_(std::move(handler)) {
  srv::HttpServerOptions options;
  options.stop_timeout = 3000ms;
  options.log = [](std::string_view) {};
  options.default_max_body = std::size_t{128} << 20;
  // No decide function: every request is accepted with default_max_body.
  server_ = std::make_unique<srv::HttpServer>(std::move(options), srv::HttpServer::DecideFn(),
                                              [this](srv::HttpRequest&& request) { return handle(request); });
  auto started = server_->start();
  EXPECT_TRUE(started.has_value()) << (started ? "" : started.error());
  base_ = "http://127.0.0.1:" + std::to_string(server_->port());
}

TestServer::~TestServer() {
  gate.open();  // never leave a handler waiting
  server_.reset();
}

srv::HttpResponse TestServer::handle(srv::HttpRequest& request) {
  ++requests_;
  {
    std::lock_guard lock(mutex_);
    peers_.insert(request.peer);
  }
  const int now = ++in_flight_;
  int seen = max_in_flight_.load();
  while (now > seen && !max_in_flight_.compare_exchange_weak(seen, now)) {
  }
  struct Leave {
    std::atomic<int>& count;
    ~Leave() { --count; }
  } leave{in_flight_};
  return handler_(request);
}

}  // namespace bucketfs::http::testing
