// Command render — see run.go.
package main

import "github.com/flotilla/flotilla/internal/cmdline"

func main() { cmdline.Main("render", run) }
