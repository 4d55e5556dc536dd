//go:build !linux

package durable_test

import "os/exec"

// dieWithParent: only Linux has a parent-death signal; elsewhere TestMain's stop is all.
func dieWithParent(cmd *exec.Cmd) {}
