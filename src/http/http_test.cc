// Tests of the pure parts of http/: routes, headers, errors, cancellation, error texts.
#include "bucketfs/http/http.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "error_text.h"
#include "test_server.h"

namespace bucketfs::http {
namespace {

using namespace std::chrono_literals;
using testing::make_error;

TEST(RouteOf, DropsQueryFragmentAndUserInfo) {
  EXPECT_EQ(route_of("GET", "http://127.0.0.1:8080/v1/reconstructions/abc?sig=SECRET&x=1"),
            "GET http://127.0.0.1:8080/v1/reconstructions/abc");
  EXPECT_EQ(route_of("PUT", "https://user:pass@host.example/a/b#frag"), "PUT https://host.example/a/b");
  EXPECT_EQ(route_of("HEAD", "https://host.example?token=x"), "HEAD https://host.example/");
  EXPECT_EQ(route_of("GET", "https://host.example/p?a=@b/c"), "GET https://host.example/p");
}

TEST(Headers, CaseInsensitiveOrderedAndRepeatable) {
  Headers headers;
  headers.add("Content-Type", "text/plain");
  headers.add("X-Thing", "1");
  headers.add("x-thing", "2");
  EXPECT_EQ(headers.get("content-type"), "text/plain");
  EXPECT_EQ(headers.get_all("X-THING").size(), 2u);
  headers.set("X-Thing", "3");
  ASSERT_EQ(headers.get_all("x-thing").size(), 1u);
  EXPECT_EQ(headers.get("x-thing"), "3");
  EXPECT_EQ(headers.erase("CONTENT-TYPE"), 1u);
  EXPECT_FALSE(headers.contains("content-type"));
}

TEST(Error, RetryableKindsAndStatuses) {
  for (int status : {408, 429, 500, 502, 503, 504}) {
    EXPECT_TRUE(make_error(ErrorKind::http_status, status).retryable()) << status;
  }
  for (int status : {400, 401, 403, 404, 409, 413, 416, 501}) {
    EXPECT_FALSE(make_error(ErrorKind::http_status, status).retryable()) << status;
  }
  EXPECT_TRUE(make_error(ErrorKind::network).retryable());
  EXPECT_TRUE(make_error(ErrorKind::timeout).retryable());
  for (auto kind : {ErrorKind::cancelled, ErrorKind::invalid_request, ErrorKind::body_too_large,
                    ErrorKind::sink_refused, ErrorKind::bad_response, ErrorKind::tls}) {
    EXPECT_FALSE(make_error(kind).retryable()) << to_string(kind);
  }
}

TEST(Error, DescribeNamesRouteStatusMessageAndAttempts) {
  Error error = make_error(ErrorKind::http_status, 404, "GET http://h/api/buckets/ns/b", "Bucket not found");
  EXPECT_EQ(error.describe(), "GET http://h/api/buckets/ns/b: HTTP 404: Bucket not found");
  error.attempts = 3;
  EXPECT_EQ(error.describe(), "GET http://h/api/buckets/ns/b: HTTP 404: Bucket not found (after 3 attempts)");
  Error network = make_error(ErrorKind::network, 0, "GET http://h/x", "Connection refused");
  EXPECT_EQ(network.describe(), "GET http://h/x: network error: Connection refused");
}

TEST(CancellationToken, SleepEndsEarlyWhenCancelled) {
  CancellationToken token;
  EXPECT_TRUE(token.sleep_for(1ms));
  std::jthread canceller([&] {
    std::this_thread::sleep_for(50ms);
    token.cancel();
  });
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(token.sleep_for(30s));
  EXPECT_LT(std::chrono::steady_clock::now() - start, 10s);
  EXPECT_TRUE(token.cancelled());
  EXPECT_FALSE(token.sleep_for(1s));  // already cancelled: returns at once
}

TEST(CancellationToken, CallbacksRunOnceAndNotAfterReset) {
  CancellationToken token;
  int first = 0;
  int second = 0;
  auto kept = token.on_cancel([&] { ++first; });
  auto dropped = token.on_cancel([&] { ++second; });
  dropped.reset();
  token.cancel();
  token.cancel();
  EXPECT_EQ(first, 1);
  EXPECT_EQ(second, 0);
  int late = 0;
  auto registration = token.on_cancel([&] { ++late; });  // already cancelled: runs at once
  EXPECT_EQ(late, 1);
}

TEST(ErrorText, JsonStringFieldUnescapes) {
  EXPECT_EQ(detail::json_string_field(R"({"error": "Bucket \"x\" not found\u00e9"})", "error"),
            "Bucket \"x\" not found\xC3\xA9");
  EXPECT_EQ(detail::json_string_field(R"({"message":"a\\b\n"})", "message"), "a\\b\n");
  // "error" as a value is not the key.
  EXPECT_EQ(detail::json_string_field(R"({"kind":"error","error":"real"})", "error"), "real");
  EXPECT_EQ(detail::json_string_field(R"({"error": {"code": 1}})", "error"), std::nullopt);
  EXPECT_EQ(detail::json_string_field(R"({"error": "unterminated)", "error"), std::nullopt);
}

TEST(ErrorText, MessagePrecedence) {
  Headers headers;
  EXPECT_EQ(detail::error_message(headers, R"({"error":"from json"})"), "from json");
  EXPECT_EQ(detail::error_message(headers, "plain text\nsecond line"), "plain text");
  EXPECT_EQ(detail::error_message(headers, "<html>nope</html>"), "");
  headers.add("X-Error-Message", "from header");
  EXPECT_EQ(detail::error_message(headers, R"({"error":"from json"})"), "from header");
}

TEST(ErrorText, ScrubRemovesCredentialsQueryAndControlCharacters) {
  Request request;
  request.url = "https://cas.example/xorb/abc?X-Amz-Signature=deadbeefcafe&Expires=99999";
  request.headers.add("Authorization", "Bearer hf_secret_token_123");
  request.headers.add("X-Xet-Access-Token", "xet_tok_456789");
  const std::string text = detail::scrub(
      "bad token hf_secret_token_123, xet_tok_456789, sig deadbeefcafe, "
      "query X-Amz-Signature=deadbeefcafe&Expires=99999\r\nnext",
      request);
  EXPECT_EQ(text.find("hf_secret_token_123"), std::string::npos) << text;
  EXPECT_EQ(text.find("xet_tok_456789"), std::string::npos) << text;
  EXPECT_EQ(text.find("deadbeefcafe"), std::string::npos) << text;
  EXPECT_EQ(text.find('\n'), std::string::npos);
  EXPECT_NE(text.find("bad token ***"), std::string::npos) << text;
  EXPECT_LE(detail::scrub(std::string(1000, 'x'), request).size(), 303u);
}

TEST(Body, MovesAndRecycles) {
  struct Counter final : BodyRecycler {
    std::atomic<int> recycled{0};
    void recycle(std::string&&) noexcept override { ++recycled; }
  };
  auto counter = std::make_shared<Counter>();
  {
    Body body(std::string("abc"), counter);
    Body moved = std::move(body);
    EXPECT_EQ(moved.text(), "abc");
    EXPECT_EQ(counter->recycled, 0);
  }
  EXPECT_EQ(counter->recycled, 1);  // once, by the owner of the storage
  Body plain(std::string("xyz"));
  EXPECT_EQ(std::move(plain).release(), "xyz");
}

}  // namespace
}  // namespace bucketfs::http
