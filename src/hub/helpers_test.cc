// Pure helpers: path encoding, Link parsing, timestamps, origins, multipart/byteranges, scrubbing.
#include <gtest/gtest.h>

#include <cstring>

#include "bucketfs/hub/cas_client.h"
#include "bucketfs/hub/hub_client.h"
#include "internal.h"

namespace bucketfs::hub {
namespace {

TEST(Helpers, EncodePathKeepsSlashesAndEscapesTheRest) {
  EXPECT_EQ(encode_path("a/b c/d#1?x=%"), "a/b%20c/d%231%3Fx%3D%25");
  EXPECT_EQ(encode_path("plain-name_1.bin~"), "plain-name_1.bin~");
  EXPECT_EQ(encode_path("tab\there+plus"), "tab%09here%2Bplus");
  EXPECT_EQ(encode_path("\xc3\xa9t\xc3\xa9"), "%C3%A9t%C3%A9");
  EXPECT_EQ(encode_query("a/b c"), "a%2Fb%20c");
}

TEST(Helpers, LinkNext) {
  EXPECT_EQ(link_next("<https://h/api/x?cursor=a%2Cb>; rel=\"next\""), "https://h/api/x?cursor=a%2Cb");
  EXPECT_EQ(link_next("<http://h/p1>; rel=\"prev\", <http://h/p3>; rel=\"next\""), "http://h/p3");
  EXPECT_EQ(link_next("<http://h/p3>;rel=next"), "http://h/p3");
  EXPECT_EQ(link_next("<http://h/p3>; rel=\"last next\""), "http://h/p3");
  EXPECT_FALSE(link_next("<http://h/p1>; rel=\"prev\""));
  EXPECT_FALSE(link_next(""));
  EXPECT_FALSE(link_next("<http://h/p1>; rel=\"nextish\""));
}

TEST(Helpers, Iso8601) {
  EXPECT_EQ(parse_iso8601_ms("1970-01-01T00:00:00Z"), 0);
  EXPECT_EQ(parse_iso8601_ms("2024-09-25T15:31:02.346Z"), 1727278262346);
  EXPECT_EQ(parse_iso8601_ms("2024-09-25T15:31:02.346789123Z"), 1727278262346);
  EXPECT_EQ(parse_iso8601_ms("2024-09-25T15:31:02.3+00:00"), 1727278262300);
  EXPECT_FALSE(parse_iso8601_ms("2024-09-25T15:31:02"));
  EXPECT_FALSE(parse_iso8601_ms("2024-02-30T15:31:02Z"));
  EXPECT_FALSE(parse_iso8601_ms("2024-09-25T15:31:02.Z"));
}

TEST(Helpers, OriginOf) {
  EXPECT_EQ(origin_of("HTTP://Host:80/a?b"), "http://host");
  EXPECT_EQ(origin_of("https://u:p@h.example:443/x"), "https://h.example");
  EXPECT_EQ(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
  EXPECT_NE(origin_of("http://127.0.0.1:8080/a"), origin_of("http://127.0.0.1:8081/a"));
  EXPECT_EQ(origin_of("/relative"), "");
}

std::vector<std::byte> bytes_of(std::string_view text) {
  std::vector<std::byte> out(text.size());
  std::memcpy(out.data(), text.data(), text.size());
  return out;
}

TEST(Helpers, MultipartByteranges) {
  EXPECT_EQ(multipart_boundary("multipart/byteranges; boundary=\"abc\""), "abc");
  EXPECT_EQ(multipart_boundary("Multipart/Byteranges;boundary=XyZ; charset=x"), "XyZ");
  EXPECT_FALSE(multipart_boundary("application/octet-stream"));

  const auto body = bytes_of(
      "\r\n--XyZ\r\nContent-Type: application/octet-stream\r\nContent-Range: bytes 0-3/100\r\n\r\n"
      "ab\r\n"
      "\r\n--XyZ\r\ncontent-range: bytes 10-11/100\r\n\r\n--\r\n--XyZ--\r\n");
  auto parts = parse_multipart_byteranges(body, "XyZ");
  ASSERT_TRUE(parts) << parts.error().describe();
  ASSERT_EQ(parts->size(), 2u);
  EXPECT_EQ((*parts)[0].first, 0u);
  EXPECT_EQ((*parts)[0].last, 3u);
  // Data is taken by length, so CRLF and "--" inside a part are data.
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*parts)[0].data.data()), 4), "ab\r\n");
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*parts)[1].data.data()), 2), "--");

  EXPECT_FALSE(parse_multipart_byteranges(bytes_of("--XyZ\r\nContent-Range: bytes 0-9/10\r\n\r\nshort"), "XyZ"));
  EXPECT_FALSE(parse_multipart_byteranges(bytes_of("--XyZ\r\nContent-Type: x\r\n\r\nab\r\n--XyZ--"), "XyZ"));
  EXPECT_FALSE(parse_multipart_byteranges(bytes_of("no boundary here"), "XyZ"));
}

TEST(Helpers, ScrubRemovesSecretsAndNewlines) {
  EXPECT_EQ(detail::scrub("a hf_x b hf_x\nc", {"hf_x", ""}), "a [redacted] b [redacted] c");
  http::Error error;
  error.kind = http::ErrorKind::http_status;
  error.status = 403;
  error.route = "GET http://h/api";
  error.message = "token hf_secret is read-only";
  const auto hub = detail::from_http(error, "bucket a/b", {"hf_secret"});
  EXPECT_EQ(hub.kind, HubErrorKind::forbidden);
  EXPECT_EQ(hub.describe().find("hf_secret"), std::string::npos);
  EXPECT_NE(hub.describe().find("bucket a/b"), std::string::npos);
}

}  // namespace
}  // namespace bucketfs::hub
