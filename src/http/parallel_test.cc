// Tests of perform_each / perform_all over the real transport.
#include "bucketfs/http/parallel.h"

#include <gtest/gtest.h>

#include <thread>

#include "bucketfs/http/curl_transport.h"
#include "test_server.h"

namespace bucketfs::http {
namespace {

using namespace std::chrono_literals;
using testing::TestServer;
using Clock = std::chrono::steady_clock;

class ParallelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<TestServer>([this](srv::HttpRequest& request) -> srv::HttpResponse {
      const std::string& path = request.raw_path;
      if (path.starts_with("/slow/")) {
        std::this_thread::sleep_for(100ms);
        return srv::HttpResponse::bytes(200, path.substr(6));
      }
      if (path == "/fail") return srv::HttpResponse::error(404, "gone");
      if (path == "/block") {
        server_->gate.wait(10s);
        return srv::HttpResponse::bytes(200, "late");
      }
      return srv::HttpResponse::error(404, "no route");
    });
  }

  std::vector<Request> requests(std::size_t count, std::string_view prefix) {
    std::vector<Request> list(count);
    for (std::size_t i = 0; i < count; ++i) {
      list[i].url = server_->url(std::string(prefix) + std::to_string(i));
      list[i].timeouts.stall = 0ms;
    }
    return list;
  }

  std::unique_ptr<TestServer> server_;
  CurlTransport curl_;
};

TEST_F(ParallelTest, ResultsInRequestOrderWithAtMostNInFlight) {
  const auto list = requests(16, "/slow/");
  const auto start = Clock::now();
  auto results = perform_all(curl_, list, ParallelOptions{.max_parallel = 4}, nullptr);
  const auto elapsed = Clock::now() - start;
  ASSERT_EQ(results.size(), list.size());
  for (std::size_t i = 0; i < results.size(); ++i) {
    ASSERT_TRUE(results[i]) << results[i].error().describe();
    EXPECT_EQ(results[i]->body.text(), std::to_string(i));
  }
  EXPECT_LE(server_->max_in_flight(), 4);
  EXPECT_GE(server_->max_in_flight(), 2);  // 16 x 100 ms handlers: they did overlap
  EXPECT_LT(elapsed, 1200ms);              // serially they would take 1.6 s
}

TEST_F(ParallelTest, StopOnErrorCancelsTheRest) {
  auto list = requests(12, "/block?");
  list[0].url = server_->url("/fail");
  const auto start = Clock::now();
  auto results = perform_all(curl_, list, ParallelOptions{.max_parallel = 4, .stop_on_error = true}, nullptr);
  EXPECT_LT(Clock::now() - start, 5s);  // the blocked ones did not wait for the gate
  ASSERT_FALSE(results[0]);
  EXPECT_EQ(results[0].error().status, 404);
  for (std::size_t i = 1; i < results.size(); ++i) {
    ASSERT_FALSE(results[i]) << i;
    EXPECT_EQ(results[i].error().kind, ErrorKind::cancelled) << i;
  }
  EXPECT_LE(server_->requests(), 4);  // those not started were never sent
}

TEST_F(ParallelTest, ExternalCancellationReachesEveryRequest) {
  const auto list = requests(8, "/block?");
  CancellationToken token;
  std::jthread canceller([&] {
    std::this_thread::sleep_for(200ms);
    token.cancel();
  });
  std::size_t done = 0;
  const auto start = Clock::now();
  perform_each(curl_, list, ParallelOptions{.max_parallel = 3}, &token, [&](std::size_t, Result<Response> result) {
    ++done;
    ASSERT_FALSE(result);
    EXPECT_EQ(result.error().kind, ErrorKind::cancelled);
  });
  EXPECT_EQ(done, list.size());
  EXPECT_LT(Clock::now() - start, 5s);
}

}  // namespace
}  // namespace bucketfs::http
