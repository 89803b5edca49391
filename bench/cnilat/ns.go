package main

import "github.com/weftnet/weft/internal/probe"

func inNS(path string, fn func() error) error { return probe.InNS(path, fn) }
