// Command table prints bench results (JSON lines on stdin) as an aligned table.
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"text/tabwriter"
)

func main() {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BENCHMARK\tVALUE\tUNIT\tNOTE")
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var r struct {
			Name  string  `json:"name"`
			Unit  string  `json:"unit"`
			Value float64 `json:"value"`
			Note  string  `json:"note"`
		}
		if json.Unmarshal(sc.Bytes(), &r) != nil || r.Name == "" {
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.Name, strconv.FormatFloat(r.Value, 'g', 6, 64), r.Unit, r.Note)
	}
	tw.Flush()
}
