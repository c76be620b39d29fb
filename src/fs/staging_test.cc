#include "staging.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <set>

#include "bucketfs/cache/journal.h"
#include "bucketfs/fs/mount.h"
#include "temp_dir.h"

namespace bucketfs::fs {
namespace {

namespace stdfs = std::filesystem;

// A daemon other than this test process, as its journal records and staging names show it.
cache::Owner other_daemon(std::int64_t pid, std::uint64_t start_ticks) {
  cache::Owner owner = cache::Owner::self();
  owner.pid = pid;
  owner.start_ticks = start_ticks;
  return owner;
}

void write_file(const stdfs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::set<std::string> names_in(const stdfs::path& folder) {
  std::set<std::string> names;
  for (const auto& entry : stdfs::directory_iterator(folder)) names.insert(entry.path().filename().string());
  return names;
}

TEST(StagingTest, NamesCarryTheOwnerTag) {
  const auto owner = other_daemon(1234, 5678);
  const std::string tag = owner_tag(owner);
  EXPECT_EQ(tag, "1234-5678-" + owner.boot_id.substr(0, 8));
  EXPECT_EQ(staging_file_owner("f" + tag + "-17"), tag);
  EXPECT_EQ(staging_file_owner("f1234-5678-3"), "1234-5678");  // named before owner locks
  EXPECT_EQ(staging_file_owner(owner_lock_name(tag)), "");
  EXPECT_EQ(staging_file_owner("f1234-"), "");
  EXPECT_EQ(staging_file_owner("notes.txt"), "");
}

// A daemon of an earlier boot with the same pid and start time left files under our names; the
// first creations used to fail with EIO.
TEST(StagingTest, CreateSkipsNamesAnEarlierDaemonLeft) {
  bucketfs::testing::TempDir temp("bucketfs-staging-test");
  const stdfs::path folder = temp / "staging";
  const auto owner = other_daemon(4321, 99);
  const std::string tag = owner_tag(owner);
  stdfs::create_directories(folder);
  write_file(folder / ("f" + tag + "-0"), "left over 0");
  write_file(folder / ("f" + tag + "-1"), "left over 1");

  auto staging = StagingFolder::claim(folder, owner);
  ASSERT_TRUE(staging) << staging.error();
  auto file = (*staging)->create();
  ASSERT_TRUE(file) << file.error();
  EXPECT_EQ(file->name, "f" + tag + "-2");
  EXPECT_EQ(file->path, (folder / file->name).string());
  EXPECT_EQ(stdfs::file_size(file->path), 0u);
  EXPECT_EQ(stdfs::file_size(folder / ("f" + tag + "-0")), 11u);  // untouched
  auto next = (*staging)->create();
  ASSERT_TRUE(next);
  EXPECT_EQ(next->name, "f" + tag + "-3");
  EXPECT_EQ(stdfs::status(folder).permissions() & stdfs::perms::all, stdfs::perms::owner_all);
}

TEST(StagingTest, SweepRemovesOnlyUnjournaledFilesOfDaemonsThatAreGone) {
  bucketfs::testing::TempDir temp("bucketfs-staging-test");
  const stdfs::path folder = temp / "staging";
  auto store = cache::NodeStore::open(temp / "cache");
  ASSERT_TRUE(store) << store.error().message;
  cache::Journal journal(*store);

  // Running: a claim held in this process (another open of its lock file cannot take it).
  auto running = StagingFolder::claim(folder, other_daemon(1001, 1));
  ASSERT_TRUE(running) << running.error();
  auto running_file = (*running)->create();
  ASSERT_TRUE(running_file);
  ASSERT_EQ(::write(running_file->fd.get(), "open", 4), 4);

  // Gone, lock file left: one file never closed, one closed (journaled, for a later mount).
  const auto gone = other_daemon(1002, 2);
  std::string gone_open, gone_closed;
  {
    auto claim = StagingFolder::claim(folder, gone);
    ASSERT_TRUE(claim);
    auto first = (*claim)->create();
    auto second = (*claim)->create();
    ASSERT_TRUE(first && second);
    ASSERT_EQ(::write(first->fd.get(), "half a checkpoint", 17), 17);
    gone_open = first->name;
    gone_closed = second->name;
  }
  cache::JournalRecord record;
  record.staging_name = gone_closed;
  record.bucket = "alice/ckpts";
  record.path = "step-1/model.bin";
  record.owner = gone;
  ASSERT_TRUE(journal.put(record));

  // Gone, its lock file already removed by an earlier sweep.
  const std::string lockless = "f" + owner_tag(other_daemon(1003, 3)) + "-0";
  write_file(folder / lockless, "12345");
  // Named before owner locks existed: pid and start time say whether the daemon runs.
  const auto self = cache::Owner::self();
  const std::string old_running = "f" + std::to_string(self.pid) + "-" + std::to_string(self.start_ticks) + "-0";
  const std::string old_gone = "f" + std::to_string(self.pid) + "-" + std::to_string(self.start_ticks + 1) + "-0";
  write_file(folder / old_running, "mine");
  write_file(folder / old_gone, "x");
  write_file(folder / "notes.txt", "not a staging file");

  const auto sweep = remove_orphaned_staging_files(journal, folder);
  EXPECT_EQ(sweep.removed_files, 3u);
  EXPECT_EQ(sweep.removed_bytes, 17u + 5u + 1u);
  const std::set<std::string> expected = {owner_lock_name((*running)->tag()), running_file->name, gone_closed,
                                          old_running, "notes.txt"};
  EXPECT_EQ(names_in(folder), expected);

  // The running daemon goes on creating files; a second sweep finds nothing more.
  EXPECT_TRUE((*running)->create());
  EXPECT_EQ(remove_orphaned_staging_files(journal, folder).removed_files, 0u);
}

// What recovery asks of a journal record's staging name before replaying it.
TEST(StagingTest, OwnerRunningFollowsTheLock) {
  bucketfs::testing::TempDir temp("bucketfs-staging-test");
  const stdfs::path folder = temp / "staging";
  const auto owner = other_daemon(2001, 7);
  const std::string tag = owner_tag(owner);
  {
    auto claim = StagingFolder::claim(folder, owner);
    ASSERT_TRUE(claim);
    EXPECT_EQ(owner_running(folder, tag), std::optional<bool>(true));
  }
  EXPECT_EQ(owner_running(folder, tag), std::optional<bool>(false));  // its lock file stays, free
  stdfs::remove(folder / owner_lock_name(tag));
  EXPECT_EQ(owner_running(folder, tag), std::optional<bool>(false));  // a sweep removed it
  EXPECT_EQ(owner_running(folder, "2001-7"), std::nullopt);  // before owner locks: ask the pid
  EXPECT_EQ(owner_running(folder, ""), std::nullopt);
}

// The real case: the owner is another process, alive and then killed.
TEST(StagingTest, SweepKeepsAnotherProcessFilesUntilItIsKilled) {
  bucketfs::testing::TempDir temp("bucketfs-staging-test");
  const stdfs::path folder = temp / "staging";
  int ready[2];
  ASSERT_EQ(::pipe(ready), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(ready[0]);
    auto staging = StagingFolder::claim(folder, cache::Owner::self());
    if (!staging) ::_exit(1);
    auto file = (*staging)->create();
    if (!file || ::write(file->fd.get(), "open", 4) != 4) ::_exit(2);
    if (::write(ready[1], "r", 1) != 1) ::_exit(3);
    ::pause();
    ::_exit(0);
  }
  ::close(ready[1]);
  char byte = 0;
  ASSERT_EQ(::read(ready[0], &byte, 1), 1);
  ::close(ready[0]);

  auto store = cache::NodeStore::open(temp / "cache");
  ASSERT_TRUE(store);
  cache::Journal journal(*store);
  EXPECT_EQ(remove_orphaned_staging_files(journal, folder).removed_files, 0u);
  EXPECT_EQ(names_in(folder).size(), 2u);  // its lock and its file

  ::kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  const auto sweep = remove_orphaned_staging_files(journal, folder);
  EXPECT_EQ(sweep.removed_files, 1u);
  EXPECT_EQ(sweep.removed_bytes, 4u);
  EXPECT_TRUE(names_in(folder).empty());
}

}  // namespace
}  // namespace bucketfs::fs
