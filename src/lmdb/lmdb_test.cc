#include "bucketfs/lmdb/lmdb.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "temp_dir.h"

namespace bucketfs::lmdb {
namespace {

class LmdbTest : public ::testing::Test {
 protected:
  testing::TempDir temp_{"bucketfs-lmdb-test"};
  const std::string directory_ = temp_.path();

  Environment open_env() {
    auto env = Environment::open(directory_, Environment::Options{.map_size = std::size_t{1} << 30});
    EXPECT_TRUE(env) << env.error().message;
    return std::move(*env);
  }

};

TEST_F(LmdbTest, PutCommitGetAcrossReopen) {
  {
    auto env = open_env();
    auto db = env.open_database("things");
    ASSERT_TRUE(db);
    auto txn = env.begin_write();
    ASSERT_TRUE(txn);
    ASSERT_TRUE(txn->put(*db, "alpha", "1"));
    ASSERT_TRUE(txn->put(*db, "beta", std::string("2\0two", 5)));
    ASSERT_TRUE(txn->commit());
    EXPECT_FALSE(txn->active());
  }
  auto env = open_env();
  auto db = env.open_database("things");
  ASSERT_TRUE(db);
  auto txn = env.begin_read();
  ASSERT_TRUE(txn);
  auto value = txn->get(*db, "beta");
  ASSERT_TRUE(value && *value);
  EXPECT_EQ(**value, std::string_view("2\0two", 5));
  auto missing = txn->get(*db, "gamma");
  ASSERT_TRUE(missing);
  EXPECT_FALSE(missing->has_value());
  EXPECT_EQ(*txn->count(*db), 2u);
}

TEST_F(LmdbTest, DestructorAbortsUncommittedWrites) {
  auto env = open_env();
  auto db = env.open_database("things");
  {
    auto txn = env.begin_write();
    ASSERT_TRUE(txn->put(*db, "lost", "x"));
  }
  auto txn = env.begin_read();
  EXPECT_FALSE(txn->get(*db, "lost")->has_value());
}

TEST_F(LmdbTest, CursorSeeksAndIteratesInKeyOrder) {
  auto env = open_env();
  auto db = env.open_database("things");
  {
    auto txn = env.begin_write();
    for (const char* key : {"b/2", "a/1", "b/1", "c"}) ASSERT_TRUE(txn->put(*db, key, key));
    ASSERT_TRUE(txn->commit());
  }
  auto txn = env.begin_read();
  auto cursor = txn->cursor(*db);
  ASSERT_TRUE(cursor);
  std::vector<std::string> keys;
  for (auto entry = cursor->seek("b/"); entry && *entry; entry = cursor->next()) {
    if (!(*entry)->first.starts_with("b/")) break;
    keys.emplace_back((*entry)->first);
  }
  EXPECT_EQ(keys, (std::vector<std::string>{"b/1", "b/2"}));
  auto past = cursor->seek("d");
  ASSERT_TRUE(past);
  EXPECT_FALSE(past->has_value());
}

TEST_F(LmdbTest, EraseReportsWhetherKeyExisted) {
  auto env = open_env();
  auto db = env.open_database("things");
  auto txn = env.begin_write();
  ASSERT_TRUE(txn->put(*db, "k", "v"));
  EXPECT_TRUE(*txn->erase(*db, "k"));
  EXPECT_FALSE(*txn->erase(*db, "k"));
}

TEST_F(LmdbTest, ReadTransactionMayMoveToAnotherThread) {
  auto env = open_env();
  auto db = env.open_database("things");
  {
    auto txn = env.begin_write();
    ASSERT_TRUE(txn->put(*db, "k", "v"));
    ASSERT_TRUE(txn->commit());
  }
  auto txn = env.begin_read();
  ASSERT_TRUE(txn);
  std::string seen;
  std::thread other([&] { seen = std::string(**txn->get(*db, "k")); });
  other.join();
  EXPECT_EQ(seen, "v");
}

TEST_F(LmdbTest, FilesAreOwnerOnly) {
  auto env = open_env();
  struct stat info;
  ASSERT_EQ(::stat((directory_ + "/data.mdb").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0600u);
}

TEST_F(LmdbTest, OpenMissingDirectoryIsAnError) {
  auto env = Environment::open(directory_ + "/missing", {});
  ASSERT_FALSE(env);
  EXPECT_NE(env.error().message.find("missing"), std::string::npos);
}

// Resident KiB of this process's mapping of `file` (/proc/self/smaps), 0 when it is not mapped.
std::size_t resident_kib_of_mapping(const std::string& file) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool in_mapping = false;
  std::size_t total = 0;
  while (std::getline(smaps, line)) {
    const bool header = !line.empty() && line.find(':') > line.find(' ');  // "start-end perms ..."
    if (header) {
      in_mapping = line.size() >= file.size() && line.compare(line.size() - file.size(), file.size(), file) == 0;
    } else if (in_mapping && line.rfind("Rss:", 0) == 0) {
      total += std::stoul(line.substr(4));
    }
  }
  return total;
}

TEST_F(LmdbTest, ReleaseMappedPagesEmptiesTheResidentSetAndKeepsTheData) {
  auto env = open_env();
  auto db = env.open_database("things");
  ASSERT_TRUE(db);
  const std::string value(1000, 'v');
  constexpr int kEntries = 16000;  // about 16 MiB of pages
  {
    auto txn = env.begin_write();
    ASSERT_TRUE(txn);
    for (int i = 0; i < kEntries; ++i) ASSERT_TRUE(txn->put(*db, "key" + std::to_string(i), value));
    ASSERT_TRUE(txn->commit());
  }
  auto reader = env.begin_read();  // open across the release
  ASSERT_TRUE(reader);
  for (int i = 0; i < kEntries; ++i) ASSERT_TRUE(reader->get(*db, "key" + std::to_string(i)));
  const std::string file = (std::filesystem::path(directory_) / "data.mdb").string();
  const std::size_t before = resident_kib_of_mapping(file);
  EXPECT_GT(before, 8u * 1024) << "reading every entry maps the pages that hold them";

  auto released = env.release_mapped_pages();
  ASSERT_TRUE(released) << released.error().message;
  EXPECT_LT(resident_kib_of_mapping(file), 256u);

  for (int i = 0; i < kEntries; i += 997) {
    auto got = reader->get(*db, "key" + std::to_string(i));
    ASSERT_TRUE(got && *got);
    EXPECT_EQ(**got, value);
  }
  auto fresh = env.begin_read();
  ASSERT_TRUE(fresh);
  auto last = fresh->get(*db, "key" + std::to_string(kEntries - 1));
  ASSERT_TRUE(last && *last);
  EXPECT_EQ(**last, value);
}

}  // namespace
}  // namespace bucketfs::lmdb
