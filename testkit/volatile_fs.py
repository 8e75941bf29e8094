#!/usr/bin/env python3
"""A filesystem that loses power like a disk with a volatile write cache.

Usage: volatile_fs.py BACKING MOUNTPOINT  (needs mfusepy and libfuse3)

A passthrough of BACKING at MOUNTPOINT, except that written data reaches
BACKING only when the file is fsynced: until then it is held here, per
file (by inode, so it follows renames), in 4 KiB blocks, and reads see it.
Metadata (create, rename, unlink, mkdir, truncate, chmod) reaches BACKING
at once, as a journaling filesystem commits it. So after a cut BACKING is
what a real disk could hold after power loss: files whose names exist but
whose unsynced contents are gone.

Commands on standard input, one per line, answered on standard output:
  cut clean        drop every unsynced block
  cut torn SEED    write a random half of the unsynced blocks (chosen by
                   SEED) through, at their places, and drop the rest: a
                   file of the right length with zeroed blocks inside
  stats            how many files and blocks are unsynced
A cut answers, unmounts and ends the process; operations still in flight
fail with EIO. End of input (the test died) unmounts too, so no mount
outlives its test.
"""

import errno
import os
import random
import subprocess
import sys
import threading

import mfusepy as fuse

BLOCK = 4096


class Unsynced:
    """The unsynced data of one file: blocks and its logical size."""

    def __init__(self, fd, size):
        self.fd = fd  # our own descriptor of the backing file
        self.size = size
        self.blocks = {}


class VolatileFs(fuse.Operations):
    use_ns = True

    def __init__(self, root, mountpoint):
        self.root = root
        self.mountpoint = mountpoint
        self.mutex = threading.RLock()
        self.unsynced = {}  # (st_dev, st_ino) -> Unsynced
        self.dead = False

    # -- helpers --

    def _path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _alive(self):
        if self.dead:
            raise fuse.FuseOSError(errno.EIO)

    def _key(self, fd):
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino)

    def _entry(self, fd):
        key = self._key(fd)
        entry = self.unsynced.get(key)
        if entry is None:
            entry = Unsynced(os.dup(fd), os.fstat(fd).st_size)
            self.unsynced[key] = entry
        return entry

    def _block(self, entry, index):
        block = entry.blocks.get(index)
        if block is None:
            on_disk = os.pread(entry.fd, BLOCK, index * BLOCK)
            block = bytearray(on_disk) + bytearray(BLOCK - len(on_disk))
            # Beyond the logical size a file reads as zeros, even where the
            # backing file still has old bytes (a truncate then a write).
            keep = max(0, min(BLOCK, entry.size - index * BLOCK))
            block[keep:] = bytearray(BLOCK - keep)
            entry.blocks[index] = block
        return block

    def _flush(self, key):
        entry = self.unsynced.pop(key, None)
        if entry is None:
            return
        for index, block in sorted(entry.blocks.items()):
            start = index * BLOCK
            if start < entry.size:
                os.pwrite(entry.fd, bytes(block[: min(BLOCK, entry.size - start)]), start)
        os.ftruncate(entry.fd, entry.size)
        os.fsync(entry.fd)
        os.close(entry.fd)

    # -- data --

    def create(self, path, mode, fi=None):
        self._alive()
        return os.open(self._path(path), os.O_RDWR | os.O_CREAT, mode)

    def open(self, path, flags):
        self._alive()
        return os.open(self._path(path), os.O_RDWR if not os.path.isdir(self._path(path)) else os.O_RDONLY)

    def read(self, path, size, offset, fh):
        with self.mutex:
            self._alive()
            entry = self.unsynced.get(self._key(fh))
            if entry is None:
                return os.pread(fh, size, offset)
            end = min(offset + size, entry.size)
            if end <= offset:
                return b""
            out = bytearray()
            position = offset
            while position < end:
                index, within = divmod(position, BLOCK)
                take = min(BLOCK - within, end - position)
                block = entry.blocks.get(index)
                if block is None:
                    chunk = os.pread(fh, take, position)
                    chunk += bytes(take - len(chunk))
                else:
                    chunk = block[within : within + take]
                out += chunk
                position += take
            return bytes(out)

    def write(self, path, data, offset, fh):
        with self.mutex:
            self._alive()
            entry = self._entry(fh)
            position, left = offset, memoryview(data)
            while len(left):
                index, within = divmod(position, BLOCK)
                take = min(BLOCK - within, len(left))
                block = self._block(entry, index)
                block[within : within + take] = left[:take]
                position += take
                left = left[take:]
            entry.size = max(entry.size, offset + len(data))
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            self._alive()
            target = fh if fh is not None else os.open(self._path(path), os.O_RDWR)
            try:
                entry = self.unsynced.get(self._key(target))
                os.ftruncate(target, length)
                if entry is not None:
                    entry.size = length
                    for index in [i for i in entry.blocks if i * BLOCK >= length]:
                        del entry.blocks[index]
                    tail = entry.blocks.get(length // BLOCK)
                    if tail is not None:
                        within = length % BLOCK
                        tail[within:] = bytearray(BLOCK - within)
            finally:
                if fh is None:
                    os.close(target)

    def fsync(self, path, datasync, fh):
        with self.mutex:
            self._alive()
            self._flush(self._key(fh))
            os.fsync(fh)

    def flush(self, path, fh):
        self._alive()

    def release(self, path, fh):
        os.close(fh)

    def getattr(self, path, fh=None):
        with self.mutex:
            if path != "/":  # unmounting after a cut looks at the root
                self._alive()
            st = os.lstat(self._path(path))
            attrs = {
                key: getattr(st, key)
                for key in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino")
            }
            for key in ("st_atime", "st_mtime", "st_ctime"):
                attrs[key] = getattr(st, key + "_ns")
            entry = self.unsynced.get((st.st_dev, st.st_ino))
            if entry is not None:
                attrs["st_size"] = entry.size
            return attrs

    # -- metadata: immediate --

    def readdir(self, path, fh):
        self._alive()
        return [".", ".."] + os.listdir(self._path(path))

    def mkdir(self, path, mode):
        self._alive()
        os.mkdir(self._path(path), mode)

    def rmdir(self, path):
        self._alive()
        os.rmdir(self._path(path))

    def unlink(self, path):
        self._alive()
        os.unlink(self._path(path))

    def rename(self, old, new):
        self._alive()
        os.rename(self._path(old), self._path(new))

    def link(self, target, source):
        self._alive()
        os.link(self._path(source), self._path(target))

    def symlink(self, target, source):
        self._alive()
        os.symlink(source, self._path(target))

    def readlink(self, path):
        self._alive()
        return os.readlink(self._path(path))

    def chmod(self, path, mode):
        self._alive()
        os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        self._alive()
        os.chown(self._path(path), uid, gid)

    def utimens(self, path, times=None):
        self._alive()
        os.utime(self._path(path), ns=times)

    def access(self, path, amode):
        self._alive()
        if not os.access(self._path(path), amode):
            raise fuse.FuseOSError(errno.EACCES)

    def statfs(self, path):
        self._alive()
        st = os.statvfs(self._path(path))
        return {
            key: getattr(st, key)
            for key in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax",
            )
        }

    def fsyncdir(self, path, datasync, fh):
        self._alive()  # metadata is already on disk

    def init(self, path):
        print("ready", flush=True)

    # -- the cut --

    def cut(self, torn_seed):
        with self.mutex:
            self.dead = True
            rng = random.Random(torn_seed)
            files = blocks = through = 0
            for entry in self.unsynced.values():
                files += 1
                for index, block in sorted(entry.blocks.items()):
                    blocks += 1
                    start = index * BLOCK
                    if torn_seed is not None and start < entry.size and rng.random() < 0.5:
                        os.pwrite(entry.fd, bytes(block[: min(BLOCK, entry.size - start)]), start)
                        through += 1
                if torn_seed is not None:
                    os.fsync(entry.fd)
                os.close(entry.fd)
            self.unsynced.clear()
            return files, blocks, through

    def stats(self):
        with self.mutex:
            return len(self.unsynced), sum(len(e.blocks) for e in self.unsynced.values())


def unmount(fs):
    subprocess.run(["fusermount3", "-u", "-z", fs.mountpoint], check=False)


def control(fs):
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["cut"] and (words[1:] == ["clean"] or (words[1:2] == ["torn"] and len(words) == 3)):
            seed = int(words[2]) if words[1] == "torn" else None
            print("cut %d files %d blocks %d through" % fs.cut(seed), flush=True)
            # The power is off: the mount goes with it, and so does this
            # process (which aborts the connection for anything still open).
            unmount(fs)
            sys.stdout.flush()
            os._exit(0)
        elif words == ["stats"]:
            print("unsynced %d files %d blocks" % fs.stats(), flush=True)
        else:
            print("error unknown command %r" % line.strip(), flush=True)
    # The test is gone: do not leave a mount behind.
    fs.dead = True
    unmount(fs)


def main():
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fs = VolatileFs(os.path.abspath(backing), os.path.abspath(mountpoint))
    threading.Thread(target=control, args=(fs,), daemon=True).start()
    fuse.FUSE(fs, mountpoint, foreground=True, nothreads=False)


if __name__ == "__main__":
    main()
