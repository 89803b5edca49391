// Package bpffs mounts and unmounts the bpf filesystem instances where weftd pins its
// programs' links. Each mount is a separate instance, so every weftd (every lab node) has
// pins of its own, and unmounting one releases all it holds.
package bpffs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"

	"golang.org/x/sys/unix"
)

// Mount makes dir a bpffs mount point if it is not one.
func Mount(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type == unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Mount("bpffs", dir, "bpf", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", dir, err)
	}
	return nil
}

// Unmount detaches weft's pins by unmounting the bpffs at dir (for teardown: lab down,
// tests). Nothing mounted there is not an error.
func Unmount(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		return nil
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("unmount bpffs %s: %w", dir, err)
	}
	return nil
}

// RemovePins deletes every pin in dir (a folder inside a bpffs): objects nothing else
// holds go with them, so a program attached only through a pinned link is detached.
// A missing dir is not an error.
func RemovePins(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		errs = append(errs, os.Remove(filepath.Join(dir, e.Name())))
	}
	return errors.Join(errs...)
}

// LoadPinned prepares dir (a folder in a bpffs instance of weftd's own, mounted on its
// parent if needed) and runs load, which loads a collection whose maps are pinned by name
// in dir: an earlier weftd's maps are adopted. If they have another layout (an upgrade),
// every pin in dir goes (links too: the caller attaches again; meanwhile the nftables
// proxy behind carries the traffic) and load runs again with fresh maps.
func LoadPinned(dir string, load func() error) error {
	if err := Mount(filepath.Dir(dir)); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	err := load()
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		if err := RemovePins(dir); err != nil {
			return err
		}
		err = load()
	}
	return err
}
