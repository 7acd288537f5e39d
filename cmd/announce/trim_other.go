//go:build !linux

package main

// trimResident does nothing outside Linux.
func trimResident() {}
