// Tests of CurlTransport against bucketfs-server's HTTP layer on 127.0.0.1 (real sockets).
#include "bucketfs/http/curl_transport.h"

#include <gtest/gtest.h>

#include <charconv>
#include <thread>
#include <vector>

#include "test_server.h"

namespace bucketfs::http {
namespace {

using namespace std::chrono_literals;
using testing::as_bytes;
using testing::TestServer;
using Clock = std::chrono::steady_clock;

// Serves `content` honouring "Range: bytes=a-b" (206 + Content-Range), or whole (200).
srv::HttpResponse ranged(const srv::HttpRequest& request, const std::string& content) {
  auto range = request.headers.get("Range");
  if (!range) return srv::HttpResponse::bytes(200, content);
  std::string_view spec = *range;
  spec.remove_prefix(std::string_view("bytes=").size());
  const auto dash = spec.find('-');
  std::uint64_t first = 0;
  std::uint64_t last = 0;
  std::from_chars(spec.data(), spec.data() + dash, first);
  std::from_chars(spec.data() + dash + 1, spec.data() + spec.size(), last);
  auto response = srv::HttpResponse::bytes(206, content.substr(first, last - first + 1));
  response.headers.set("Content-Range", "bytes " + std::to_string(first) + "-" + std::to_string(last) + "/" +
                                            std::to_string(content.size()));
  return response;
}

std::uint64_t fnv1a(std::string_view data) {
  std::uint64_t hash = 1469598103934665603ull;
  for (unsigned char c : data) hash = (hash ^ c) * 1099511628211ull;
  return hash;
}

class CurlTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    big_ = testing::random_text(std::size_t{3} << 20, 1);
    server_ = std::make_unique<TestServer>([this](srv::HttpRequest& request) { return handle(request); });
  }

  srv::HttpResponse handle(srv::HttpRequest& request) {
    const std::string& path = request.raw_path;
    if (path == "/hello") {
      auto response = srv::HttpResponse::bytes(200, "hello world");
      response.headers.add("X-Test", "yes");
      return response;
    }
    if (path == "/echo") {
      // What arrived: method, body size, body hash, content type, and whether Expect was sent.
      std::string text = request.method + " " + std::to_string(request.body.size()) + " " +
                         std::to_string(fnv1a(request.body)) + " " +
                         std::string(request.headers.get("Content-Type").value_or("-")) + " " +
                         (request.headers.contains("Expect") ? "expect" : "no-expect");
      return srv::HttpResponse::bytes(200, text);
    }
    if (path == "/big") return ranged(request, big_);
    if (path == "/ignores-range") return srv::HttpResponse::bytes(200, big_);
    if (path.starts_with("/path/")) return srv::HttpResponse::bytes(200, path + "|" + path);
    if (path == "/api/buckets/ns/b") {
      return srv::HttpResponse::error(404, "Bucket not found (you sent " +
                                               std::string(request.headers.get("Authorization").value_or("")) + ")");
    }
    if (path == "/header-message") {
      auto response = srv::HttpResponse::error(403, "json text");
      response.headers.add("X-Error-Message", "header text");
      return response;
    }
    if (path == "/block") {
      server_->gate.wait();
      return srv::HttpResponse::bytes(200, "late");
    }
    return srv::HttpResponse::error(404, "no route " + path);
  }

  Request get(std::string_view path) {
    Request request;
    request.url = server_->url(path);
    return request;
  }

  std::string big_;
  std::unique_ptr<TestServer> server_;
  CurlTransport transport_;
};

TEST_F(CurlTransportTest, GetReturnsBodyStatusAndCaseInsensitiveHeaders) {
  auto response = transport_.perform(get("/hello"), nullptr);
  ASSERT_TRUE(response) << response.error().describe();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->body.text(), "hello world");
  EXPECT_EQ(response->body_bytes, 11u);
  EXPECT_EQ(response->headers.get("x-test"), "yes");
  EXPECT_EQ(response->headers.get("CONTENT-LENGTH"), "11");
}

TEST_F(CurlTransportTest, PostSendsTheSpanWithoutExpectAndWithDefaultContentType) {
  const std::string payload = testing::random_text((std::size_t{5} << 20) + 7, 2);  // > 1 MiB: curl would Expect
  Request request = get("/echo");
  request.method = "POST";
  request.body = as_bytes(payload);
  auto response = transport_.perform(request, nullptr);
  ASSERT_TRUE(response) << response.error().describe();
  EXPECT_EQ(response->body.text(), "POST " + std::to_string(payload.size()) + " " + std::to_string(fnv1a(payload)) +
                                       " application/octet-stream no-expect");

  request.method = "PUT";
  request.headers.add("Content-Type", "application/json");
  request.body = as_bytes("{}");
  response = transport_.perform(request, nullptr);
  ASSERT_TRUE(response);
  EXPECT_EQ(response->body.text(), "PUT 2 " + std::to_string(fnv1a("{}")) + " application/json no-expect");

  Request empty_post = get("/echo");
  empty_post.method = "POST";
  response = transport_.perform(empty_post, nullptr);
  ASSERT_TRUE(response);
  EXPECT_TRUE(response->body.text().starts_with("POST 0 ")) << response->body.text();

  Request del = get("/echo");
  del.method = "DELETE";
  response = transport_.perform(del, nullptr);
  ASSERT_TRUE(response);
  EXPECT_TRUE(response->body.text().starts_with("DELETE 0 ")) << response->body.text();
}

TEST_F(CurlTransportTest, HeadHasHeadersAndNoBody) {
  Request request = get("/big");
  request.method = "HEAD";
  auto response = transport_.perform(request, nullptr);
  ASSERT_TRUE(response) << response.error().describe();
  EXPECT_EQ(response->status, 200);
  EXPECT_EQ(response->headers.get("Content-Length"), std::to_string(big_.size()));
  EXPECT_TRUE(response->body.empty());
}

TEST_F(CurlTransportTest, RangeSendsHeaderAndReturnsExactlyThoseBytes) {
  Request request = get("/big");
  request.range = Range{1000, 1000 + 70000 - 1};
  auto response = transport_.perform(request, nullptr);
  ASSERT_TRUE(response) << response.error().describe();
  EXPECT_EQ(response->status, 206);
  EXPECT_EQ(response->body.text(), std::string_view(big_).substr(1000, 70000));
}

TEST_F(CurlTransportTest, RangeIgnoredByServerIsABadResponse) {
  Request request = get("/ignores-range");
  request.range = Range{10, 19};
  auto response = transport_.perform(request, nullptr);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::bad_response);
  EXPECT_FALSE(response.error().retryable());
}

TEST_F(CurlTransportTest, StreamingSinkReceivesEveryByteInOrder) {
  std::string received;
  int calls = 0;
  Request request = get("/big");
  request.max_body = 1024;  // the cap is for buffered bodies only
  request.sink = [&](std::span<const std::byte> piece) {
    received += testing::to_string(piece);
    ++calls;
    return true;
  };
  auto response = transport_.perform(request, nullptr);
  ASSERT_TRUE(response) << response.error().describe();
  EXPECT_TRUE(response->body.empty());
  EXPECT_EQ(response->body_bytes, big_.size());
  EXPECT_GT(calls, 1);
  EXPECT_EQ(received, big_);
}

TEST_F(CurlTransportTest, SinkThatRefusesStopsTheTransfer) {
  std::size_t received = 0;
  Request request = get("/big");
  request.sink = [&](std::span<const std::byte> piece) {
    received += piece.size();
    return received < 100000;
  };
  auto response = transport_.perform(request, nullptr);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::sink_refused);
  EXPECT_LT(received, big_.size());
}

TEST_F(CurlTransportTest, ErrorBodiesNeverReachTheSink) {
  bool called = false;
  Request request = get("/nothing-here");
  request.sink = [&](std::span<const std::byte>) { return called = true; };
  auto response = transport_.perform(request, nullptr);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().status, 404);
  EXPECT_EQ(response.error().message, "no route /nothing-here");
  EXPECT_FALSE(called);
}

TEST_F(CurlTransportTest, BufferedBodyOverTheCapFails) {
  Request request = get("/big");
  request.max_body = std::size_t{1} << 20;
  auto response = transport_.perform(request, nullptr);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::body_too_large);
  request.max_body = big_.size();  // exactly fits
  EXPECT_TRUE(transport_.perform(request, nullptr));
}

TEST_F(CurlTransportTest, SequentialRequestsReuseOneConnection) {
  for (int i = 0; i < 20; ++i) {
    auto response = transport_.perform(get("/hello"), nullptr);
    ASSERT_TRUE(response) << response.error().describe();
    EXPECT_EQ(response->new_connection, i == 0) << "request " << i;
  }
  EXPECT_EQ(server_->peers().size(), 1u);  // one client port: one TCP connection
  EXPECT_EQ(server_->requests(), 20);
}

TEST_F(CurlTransportTest, EightThreadsAtOnceGetTheirOwnAnswers) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 25;
  std::atomic<int> failures{0};
  {
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          const std::string path = "/path/" + std::to_string(t) + "/" + std::to_string(i);
          auto response = transport_.perform(get(path), nullptr);
          if (!response || response->body.text() != path + "|" + path) ++failures;
        }
      });
    }
  }
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(server_->requests(), kThreads * kPerThread);
  // Handles (and their connections) are pooled: never more connections than threads at once.
  EXPECT_LE(server_->peers().size(), static_cast<std::size_t>(kThreads));
  EXPECT_LE(transport_.idle_slots(), static_cast<std::size_t>(kThreads));
}

TEST_F(CurlTransportTest, ErrorNamesRouteStatusAndServerMessageButNoSecrets) {
  Request request = get("/api/buckets/ns/b?X-Amz-Signature=sig_SECRET_value&expires=1");
  request.headers.add("Authorization", "Bearer hf_SECRET_TOKEN_abc");
  auto response = transport_.perform(request, nullptr);
  ASSERT_FALSE(response);
  const Error& error = response.error();
  EXPECT_EQ(error.kind, ErrorKind::http_status);
  EXPECT_EQ(error.status, 404);
  EXPECT_EQ(error.route, "GET " + server_->url("/api/buckets/ns/b"));
  EXPECT_TRUE(error.message.starts_with("Bucket not found")) << error.message;
  const std::string text = error.describe();
  EXPECT_NE(text.find("/api/buckets/ns/b: HTTP 404: Bucket not found"), std::string::npos) << text;
  for (std::string_view secret : {"hf_SECRET_TOKEN_abc", "sig_SECRET_value", "X-Amz-Signature", "?"}) {
    EXPECT_EQ(text.find(secret), std::string::npos) << secret << " in " << text;
  }
}

TEST_F(CurlTransportTest, ErrorPrefersTheXErrorMessageHeader) {
  auto response = transport_.perform(get("/header-message"), nullptr);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().status, 403);
  EXPECT_EQ(response.error().message, "header text");
}

TEST_F(CurlTransportTest, LargeBodyBuffersAreReused) {
  const void* first_data = nullptr;
  {
    auto response = transport_.perform(get("/big"), nullptr);
    ASSERT_TRUE(response);
    first_data = response->body.text().data();
  }
  EXPECT_GE(transport_.pooled_buffer_bytes(), big_.size());
  auto again = transport_.perform(get("/big"), nullptr);
  ASSERT_TRUE(again);
  EXPECT_EQ(again->body.text(), big_);
  EXPECT_EQ(static_cast<const void*>(again->body.text().data()), first_data);  // same pages, no fresh ones
  EXPECT_EQ(transport_.pooled_buffer_bytes(), 0u);
}

TEST_F(CurlTransportTest, ClosedPortIsANetworkError) {
  Request request;
  request.url = "http://127.0.0.1:" + std::to_string(testing::closed_port()) + "/x?secret=1";
  auto response = transport_.perform(request, nullptr);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::network);
  EXPECT_TRUE(response.error().retryable());
  EXPECT_EQ(response.error().describe().find("secret"), std::string::npos);
}

TEST_F(CurlTransportTest, StalledServerTimesOutAfterTheStallWindow) {
  Request request = get("/block");
  request.timeouts.stall = 300ms;
  const auto start = Clock::now();
  auto response = transport_.perform(request, nullptr);
  const auto elapsed = Clock::now() - start;
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::timeout);
  EXPECT_NE(response.error().message.find("stalled"), std::string::npos);
  EXPECT_GE(elapsed, 300ms);
  EXPECT_LT(elapsed, 5s);
}

TEST_F(CurlTransportTest, TotalTimeoutIsATimeout) {
  Request request = get("/block");
  request.timeouts.stall = 0ms;
  request.timeouts.total = 300ms;
  auto response = transport_.perform(request, nullptr);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::timeout);
}

TEST_F(CurlTransportTest, CancelDuringTransferReturnsPromptly) {
  CancellationToken token;
  Request request = get("/block");
  request.timeouts.stall = 0ms;  // only the token can end it
  std::jthread canceller([&] {
    std::this_thread::sleep_for(200ms);
    token.cancel();
  });
  const auto start = Clock::now();
  auto response = transport_.perform(request, &token);
  const auto elapsed = Clock::now() - start;
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::cancelled);
  EXPECT_GE(elapsed, 150ms);
  EXPECT_LT(elapsed, 3s);
  // The handle went back to the pool and works for the next request.
  EXPECT_TRUE(transport_.perform(get("/hello"), nullptr));
}

TEST_F(CurlTransportTest, AlreadyCancelledSendsNothing) {
  CancellationToken token;
  token.cancel();
  auto response = transport_.perform(get("/hello"), &token);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::cancelled);
  EXPECT_EQ(server_->requests(), 0);
}

TEST_F(CurlTransportTest, HeaderInjectionIsRefusedBeforeSending) {
  Request request = get("/hello");
  request.headers.add("X-Evil", "a\r\nX-Other: b");
  auto response = transport_.perform(request, nullptr);
  ASSERT_FALSE(response);
  EXPECT_EQ(response.error().kind, ErrorKind::invalid_request);
  Request bad_method = get("/hello");
  bad_method.method = "GE T";
  EXPECT_EQ(transport_.perform(bad_method, nullptr).error().kind, ErrorKind::invalid_request);
  Request bad_scheme;
  bad_scheme.url = "file:///etc/passwd";
  EXPECT_EQ(transport_.perform(bad_scheme, nullptr).error().kind, ErrorKind::invalid_request);
  EXPECT_EQ(server_->requests(), 0);
}

}  // namespace
}  // namespace bucketfs::http
