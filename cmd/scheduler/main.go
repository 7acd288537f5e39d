// Command scheduler — see run.go.
package main

import "github.com/flotilla/flotilla/internal/cmdline"

func main() { cmdline.Main("scheduler", run) }
