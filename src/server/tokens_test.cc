#include "tokens.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include "temp_dir.h"

namespace bucketfs::server {
namespace {

class TokensTest : public ::testing::Test {
 protected:
  testing::TempDir temp_{"bucketfs-tokens-test"};
  const std::string directory_ = temp_.path();
  std::string write(const std::string& text) {
    const std::string path = directory_ + "/tokens";
    std::ofstream(path) << text;
    return path;
  }
};

TEST_F(TokensTest, ParsesLinesCommentsAndNamespaces) {
  auto tokens = HubTokens::load(write("# comment\nhf_writer_123 write alice,team  # trailing\n\nhf_reader_456 read alice\n"));
  ASSERT_TRUE(tokens) << tokens.error();
  const HubToken* writer = tokens->find("hf_writer_123");
  ASSERT_NE(writer, nullptr);
  EXPECT_TRUE(writer->may_write("team"));
  EXPECT_FALSE(writer->may_read("bob"));
  const HubToken* reader = tokens->find("hf_reader_456");
  ASSERT_NE(reader, nullptr);
  EXPECT_TRUE(reader->may_read("alice"));
  EXPECT_FALSE(reader->may_write("alice"));
  EXPECT_EQ(tokens->find("hf_reader_45"), nullptr);
  EXPECT_EQ(tokens->find(""), nullptr);
}

TEST_F(TokensTest, ErrorsNameTheLineButNeverTheToken) {
  for (const char* bad : {"hf_secret_token_x maybe alice\n", "notprefixed_secret write alice\n",
                          "hf_secret_token_x write\n", "hf_secret_token_x write alice extra\n",
                          "hf_secret_token_x write alice,\n"}) {
    auto tokens = HubTokens::load(write(std::string("# first\n") + bad));
    ASSERT_FALSE(tokens) << bad;
    EXPECT_NE(tokens.error().find(":2:"), std::string::npos) << tokens.error();
    EXPECT_EQ(tokens.error().find("secret"), std::string::npos) << "the error leaks the token: " << tokens.error();
  }
}

TEST_F(TokensTest, DefaultTokensFileIsPrivate) {
  const std::string path = directory_ + "/default-tokens";
  auto tokens = HubTokens::create_default(path);
  ASSERT_TRUE(tokens) << tokens.error();
  ASSERT_EQ(tokens->all().size(), 1u);
  EXPECT_TRUE(tokens->all()[0].token.starts_with("hf_"));
  EXPECT_TRUE(tokens->all()[0].may_write("local"));
  struct stat info;
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
}

TEST_F(TokensTest, CasTokensAreSignedScopedAndExpire) {
  auto signer = Signer::open(directory_);
  ASSERT_TRUE(signer) << signer.error();
  const std::string token = signer->issue_cas_token({"alice/b", Access::kWrite, 1000, 1234567});
  auto [check, grant] = signer->check_cas_token(token, 999);
  EXPECT_EQ(check, TokenCheck::kValid);
  EXPECT_EQ(grant.bucket, "alice/b");
  EXPECT_EQ(grant.access, Access::kWrite);
  EXPECT_EQ(grant.bucket_created_ms, 1234567);
  EXPECT_EQ(signer->check_cas_token(token, 1000).first, TokenCheck::kExpired);
  // Any change to the token breaks its signature.
  for (std::size_t i = 4; i < token.size(); i += 7) {
    std::string forged = token;
    forged[i] = forged[i] == 'a' ? 'b' : 'a';
    EXPECT_EQ(signer->check_cas_token(forged, 999).first, TokenCheck::kInvalid) << i;
  }
  // Another server's secret does not validate it; the same data dir gives the same secret.
  Signer other(std::array<std::uint8_t, 32>{});
  EXPECT_EQ(other.check_cas_token(token, 999).first, TokenCheck::kInvalid);
  auto reopened = Signer::open(directory_);
  ASSERT_TRUE(reopened);
  EXPECT_EQ(reopened->check_cas_token(token, 999).first, TokenCheck::kValid);
  struct stat info;
  ASSERT_EQ(::stat((directory_ + "/secret").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
}

TEST_F(TokensTest, SignedXorbRangesCoverExactlyTheirRange) {
  Signer signer(std::array<std::uint8_t, 32>{1, 2, 3});
  const auto signature = signer.sign_xorb_range("abc", 10, 20, 5000);
  EXPECT_TRUE(signer.verify_xorb_range("abc", 10, 20, 5000, signature));
  EXPECT_FALSE(signer.verify_xorb_range("abc", 10, 21, 5000, signature));
  EXPECT_FALSE(signer.verify_xorb_range("abd", 10, 20, 5000, signature));
  EXPECT_FALSE(signer.verify_xorb_range("abc", 10, 20, 5001, signature));
}

}  // namespace
}  // namespace bucketfs::server
