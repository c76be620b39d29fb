// Tests of the retry policy: pure delay and header parsing, then RetryingTransport over the real
// CurlTransport against a local server, and over a fault-injecting ForwardingTransport.
#include "bucketfs/http/retry.h"

#include <gtest/gtest.h>

#include <map>
#include <thread>
#include <tuple>

#include "bucketfs/http/curl_transport.h"
#include "test_server.h"

namespace bucketfs::http {
namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;
using testing::TestServer;
using Clock = std::chrono::steady_clock;

// ---- Pure parts ----------------------------------------------------------------------------------------

TEST(BackoffDelay, FullJitterWithinAnExponentialEnvelopeAndCap) {
  RetryPolicy policy;
  policy.initial_backoff = 100ms;
  policy.max_backoff = 1000ms;
  EXPECT_EQ(backoff_delay(policy, 1, std::nullopt, 0.0), 0ms);
  EXPECT_EQ(backoff_delay(policy, 1, std::nullopt, 0.999), 99ms);
  EXPECT_EQ(backoff_delay(policy, 2, std::nullopt, 0.5), 100ms);   // envelope 200
  EXPECT_EQ(backoff_delay(policy, 3, std::nullopt, 0.5), 200ms);   // envelope 400
  EXPECT_EQ(backoff_delay(policy, 5, std::nullopt, 0.5), 500ms);   // capped at 1000
  EXPECT_EQ(backoff_delay(policy, 60, std::nullopt, 0.5), 500ms);  // no overflow
}

TEST(BackoffDelay, ServerWaitIsAFloorWithBoundedJitter) {
  RetryPolicy policy;
  policy.initial_backoff = 100ms;
  EXPECT_EQ(backoff_delay(policy, 1, 5000ms, 0.0), 5000ms);
  EXPECT_EQ(backoff_delay(policy, 1, 5000ms, 0.5), 5050ms);
  policy.max_backoff = 60'000ms;
  EXPECT_EQ(backoff_delay(policy, 20, 5000ms, 0.5), 5500ms);  // jitter never above 1 s
}

TEST(ParseRetryAfter, SecondsAndHttpDates) {
  EXPECT_EQ(parse_retry_after("120"), 120'000ms);
  EXPECT_EQ(parse_retry_after(" 0 "), 0ms);
  const auto now = std::chrono::system_clock::from_time_t(1445412480 - 30);  // 30 s before 07:28:00
  EXPECT_EQ(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now), 30'000ms);
  EXPECT_EQ(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now + 1h), 0ms);  // in the past
  EXPECT_EQ(parse_retry_after("soon"), std::nullopt);
  EXPECT_EQ(parse_retry_after("-5"), std::nullopt);
  EXPECT_EQ(parse_retry_after(""), std::nullopt);
}

TEST(ParseRateLimit, HubFormat) {
  EXPECT_EQ(parse_rate_limit(R"("api";r=0;t=55)"), 55'000ms);
  EXPECT_EQ(parse_rate_limit(R"("api"; r=0; t=7)"), 7'000ms);
  EXPECT_EQ(parse_rate_limit(R"("api";r=12;t=55)"), std::nullopt);  // not exhausted
  EXPECT_EQ(parse_rate_limit(R"("api";r=0;t=10, "resolvers";r=0;t=30)"), 30'000ms);
  EXPECT_EQ(parse_rate_limit(R"("api";r=3;t=10, "resolvers";r=0;t=30)"), 30'000ms);
  EXPECT_EQ(parse_rate_limit(R"("api";t=55)"), std::nullopt);
  EXPECT_EQ(parse_rate_limit("garbage"), std::nullopt);
  EXPECT_EQ(parse_rate_limit(R"("api";r=0;t=soon)"), std::nullopt);
}

TEST(ServerWait, RetryAfterFirstThenRateLimit) {
  Headers headers;
  EXPECT_EQ(server_wait(headers), std::nullopt);
  headers.add("RateLimit", R"("api";r=0;t=9)");
  EXPECT_EQ(server_wait(headers), 9'000ms);
  headers.add("retry-after", "2");
  EXPECT_EQ(server_wait(headers), 2'000ms);
}

// ---- Over the real transport ---------------------------------------------------------------------------

RetryPolicy fast_policy(int attempts = 4) {
  RetryPolicy policy;
  policy.max_attempts = attempts;
  policy.initial_backoff = 10ms;
  policy.max_backoff = 50ms;
  return policy;
}

class RetryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<TestServer>([this](srv::HttpRequest& request) { return handle(request); });
  }

  srv::HttpResponse handle(srv::HttpRequest& request) {
    const std::string& path = request.raw_path;
    // Counted paths are fixed up front, so the map itself is never modified concurrently.
    auto counter = counts_.find(path);
    const int n = counter == counts_.end() ? 0 : ++counter->second;
    if (path == "/flaky-503") {
      return n <= 2 ? srv::HttpResponse::error(503, "busy") : srv::HttpResponse::bytes(200, "finally");
    }
    if (path == "/retry-after") {
      if (n > 1) return srv::HttpResponse::bytes(200, "after wait");
      auto response = srv::HttpResponse::error(429, "slow down");
      response.headers.add("Retry-After", "1");
      return response;
    }
    if (path == "/ratelimit") {
      if (n > 1) return srv::HttpResponse::bytes(200, "after reset");
      auto response = srv::HttpResponse::error(429, "rate limited");
      response.headers.add("RateLimit", R"("api";r=0;t=1)");
      response.headers.add("RateLimit-Policy", R"("api";q=500;w=300)");
      return response;
    }
    if (path == "/long-wait") {
      auto response = srv::HttpResponse::error(503, "maintenance");
      response.headers.add("Retry-After", "3600");
      return response;
    }
    if (path == "/wait-30") {
      auto response = srv::HttpResponse::error(503, "later");
      response.headers.add("Retry-After", "30");
      return response;
    }
    if (path == "/400") return srv::HttpResponse::error(400, "bad request body");
    if (path == "/403") return srv::HttpResponse::error(403, "no write access");
    if (path == "/404") return srv::HttpResponse::error(404, "Entry not found");
    if (path == "/stall-twice") {
      if (n <= 2) server_->gate.wait(5s);
      return srv::HttpResponse::bytes(200, "no stall");
    }
    if (path == "/partial-once") {
      // First answer: 64 KiB of a 1 MiB body, then the connection breaks.
      const bool break_it = n == 1;
      return srv::HttpResponse::stream(200, content_.size(),
                                       [this, break_it](std::uint64_t position, char* out, std::size_t size) {
                                         if (break_it && position >= 65536) return std::int64_t{-1};
                                         const std::size_t limit = break_it ? 65536 : content_.size();
                                         const std::size_t count = std::min<std::size_t>(size, limit - position);
                                         std::copy_n(content_.data() + position, count, out);
                                         return static_cast<std::int64_t>(count);
                                       });
    }
    if (path.starts_with("/item/")) return srv::HttpResponse::bytes(200, path);
    return srv::HttpResponse::error(404, "no route");
  }

  int count(const std::string& path) { return counts_.at(path).load(); }

  std::map<std::string, std::atomic<int>> counts_ = make_counts();
  static std::map<std::string, std::atomic<int>> make_counts() {
    std::map<std::string, std::atomic<int>> counts;
    for (const char* path : {"/flaky-503", "/retry-after", "/ratelimit", "/long-wait", "/wait-30", "/400", "/403",
                             "/404", "/stall-twice", "/partial-once", "/nowhere"}) {
      counts[path];
    }
    return counts;
  }
  const std::string content_ = testing::random_text(std::size_t{1} << 20, 5);
  std::unique_ptr<TestServer> server_;
  CurlTransport curl_;

  Request get(std::string_view path) {
    Request request;
    request.url = server_->url(path);
    return request;
  }
};

TEST_F(RetryTest, RetriesA503UntilSuccess) {
  int observed = 0;
  RetryPolicy policy = fast_policy();
  policy.on_retry = [&](const Error& error, int attempt, milliseconds) {
    EXPECT_EQ(error.status, 503);
    EXPECT_EQ(attempt, ++observed);
  };
  RetryingTransport transport(curl_, policy);
  auto response = transport.perform(get("/flaky-503"), nullptr);
  ASSERT_TRUE(response) << response.error().describe();
  EXPECT_EQ(response->body.text(), "finally");
  EXPECT_EQ(response->attempts, 3);
  EXPECT_EQ(observed, 2);
  EXPECT_EQ(count("/flaky-503"), 3);
}

TEST_F(RetryTest, HonoursRetryAfterOn429) {
  RetryingTransport transport(curl_, fast_policy());
  const auto start = Clock::now();
  auto response = transport.perform(get("/retry-after"), nullptr);
  const auto elapsed = Clock::now() - start;
  ASSERT_TRUE(response) << response.error().describe();
  EXPECT_EQ(response->attempts, 2);
  EXPECT_GE(elapsed, 1000ms);  // the backoff alone (<= 50 ms) would be far shorter
  EXPECT_LT(elapsed, 10s);
}

TEST_F(RetryTest, HonoursTheHubRateLimitHeaderOn429) {
  RetryingTransport transport(curl_, fast_policy());
  const auto start = Clock::now();
  auto response = transport.perform(get("/ratelimit"), nullptr);
  const auto elapsed = Clock::now() - start;
  ASSERT_TRUE(response) << response.error().describe();
  EXPECT_EQ(response->body.text(), "after reset");
  EXPECT_GE(elapsed, 1000ms);
  EXPECT_LT(elapsed, 10s);
}

TEST_F(RetryTest, AServerWaitBeyondTheLimitEndsRetriesWithTheHint) {
  RetryPolicy policy = fast_policy();
  policy.max_server_wait = 60s;
  RetryingTransport transport(curl_, policy);
  auto response = transport.perform(get("/long-wait"), nullptr);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().status, 503);
  EXPECT_EQ(response.error().retry_after, milliseconds(3'600'000));
  EXPECT_EQ(count("/long-wait"), 1);
}

TEST_F(RetryTest, NeverRetriesOtherClientErrors) {
  RetryingTransport transport(curl_, fast_policy());
  for (auto [path, status, message] : {std::tuple{"/400", 400, "bad request body"},
                                       std::tuple{"/403", 403, "no write access"},
                                       std::tuple{"/404", 404, "Entry not found"}}) {
    Request request = get(std::string(path) + "?token=query_secret");
    request.headers.add("Authorization", "Bearer hf_never_print_me");
    auto response = transport.perform(request, nullptr);
    ASSERT_FALSE(response) << path;
    const Error& error = response.error();
    EXPECT_EQ(error.kind, ErrorKind::http_status);
    EXPECT_EQ(error.status, status);
    EXPECT_EQ(error.attempts, 1);
    EXPECT_EQ(error.message, message);
    EXPECT_EQ(error.route, "GET " + server_->url(path));
    const std::string text = error.describe();
    EXPECT_EQ(text.find("query_secret"), std::string::npos) << text;
    EXPECT_EQ(text.find("hf_never_print_me"), std::string::npos) << text;
    EXPECT_EQ(count(path), 1) << path;
  }
}

TEST_F(RetryTest, NetworkErrorsAreRetriedThenReported) {
  int retries = 0;
  RetryPolicy policy = fast_policy(3);
  policy.on_retry = [&](const Error& error, int, milliseconds) {
    EXPECT_EQ(error.kind, ErrorKind::network);
    ++retries;
  };
  RetryingTransport transport(curl_, policy);
  Request request;
  request.url = "http://127.0.0.1:" + std::to_string(testing::closed_port()) + "/x";
  auto response = transport.perform(request, nullptr);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::network);
  EXPECT_EQ(response.error().attempts, 3);
  EXPECT_EQ(retries, 2);
  EXPECT_NE(response.error().describe().find("(after 3 attempts)"), std::string::npos);
}

TEST_F(RetryTest, StallsAreDetectedAndRetried) {
  RetryingTransport transport(curl_, fast_policy());
  Request request = get("/stall-twice");
  request.timeouts.stall = 300ms;
  const auto start = Clock::now();
  auto response = transport.perform(request, nullptr);
  ASSERT_TRUE(response) << response.error().describe();
  EXPECT_EQ(response->body.text(), "no stall");
  EXPECT_EQ(response->attempts, 3);
  EXPECT_GE(Clock::now() - start, 600ms);  // two stall windows
  EXPECT_EQ(count("/stall-twice"), 3);
}

TEST_F(RetryTest, CancelDuringBackoffReturnsPromptly) {
  RetryingTransport transport(curl_, fast_policy());
  CancellationToken token;
  std::jthread canceller([&] {
    std::this_thread::sleep_for(300ms);
    token.cancel();
  });
  const auto start = Clock::now();
  auto response = transport.perform(get("/wait-30"), &token);  // the server asks for 30 s
  const auto elapsed = Clock::now() - start;
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::cancelled);
  EXPECT_EQ(response.error().attempts, 1);
  EXPECT_LT(elapsed, 5s);
  EXPECT_EQ(count("/wait-30"), 1);
}

TEST_F(RetryTest, ASinkThatGotBytesIsRetriedOnlyWithAnOnRetryHook) {
  RetryingTransport transport(curl_, fast_policy());
  std::string received;
  Request request = get("/partial-once");
  request.sink = [&](std::span<const std::byte> piece) {
    received += testing::to_string(piece);
    return true;
  };
  auto response = transport.perform(request, nullptr);
  ASSERT_FALSE(response);  // the connection broke after 64 KiB; without a hook no retry
  EXPECT_EQ(response.error().kind, ErrorKind::network);
  EXPECT_EQ(response.error().attempts, 1);
  EXPECT_GT(received.size(), 0u);

  int resets = 0;
  received.clear();
  request.on_retry = [&] {
    ++resets;
    received.clear();
  };
  // The server breaks only the first answer of the path, so reset its count.
  counts_.at("/partial-once") = 0;
  response = transport.perform(request, nullptr);
  ASSERT_TRUE(response) << response.error().describe();
  EXPECT_EQ(response->attempts, 2);
  EXPECT_EQ(resets, 1);
  EXPECT_EQ(received, content_);
}

// Fails every third request without sending it: a fault injector wrapping the real transport.
class EveryThirdFails final : public ForwardingTransport {
 public:
  using ForwardingTransport::ForwardingTransport;
  Result<Response> perform(const Request& request, const CancellationToken* cancel) override {
    if (++calls_ % 3 == 0) {
      ++injected_;
      return std::unexpected(testing::make_error(ErrorKind::network, 0, route_of(request.method, request.url), "injected fault"));
    }
    return ForwardingTransport::perform(request, cancel);
  }
  int injected() const { return injected_; }

 private:
  std::atomic<int> calls_{0};
  std::atomic<int> injected_{0};
};

TEST_F(RetryTest, FaultInjectionBelowTheRetryLayerIsInvisibleAbove) {
  EveryThirdFails faulty(curl_);
  RetryingTransport transport(faulty, fast_policy(3));
  for (int i = 0; i < 30; ++i) {
    const std::string path = "/item/" + std::to_string(i);
    auto response = transport.perform(get(path), nullptr);
    ASSERT_TRUE(response) << response.error().describe();
    EXPECT_EQ(response->body.text(), path);
  }
  EXPECT_EQ(faulty.injected(), 14);        // 44 calls (30 successes), calls 3, 6, ..., 42 failed
  EXPECT_EQ(server_->requests(), 30);      // each item reached the server exactly once

  // Without the retry layer the same faults surface.
  EveryThirdFails bare(curl_);
  int failed = 0;
  for (int i = 0; i < 6; ++i) failed += bare.perform(get("/item/x"), nullptr) ? 0 : 1;
  EXPECT_EQ(failed, 2);
}

}  // namespace
}  // namespace bucketfs::http
