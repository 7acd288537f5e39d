package deploy

import (
	"bufio"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// step is one marked part of docs/deploy.md, in the doc's order. A marker is
// an HTML comment (invisible when the doc is read) right before a fenced
// block, or alone for a check:
//
//	<!-- deploy-test: run lb -->          the block is a shell script, run with sh -e on lb
//	<!-- deploy-test: run workers -->     … on every role=worker machine, in turn
//	<!-- deploy-test: file all -->        the block is a file whose first line, "# /path", says where
//	<!-- deploy-test: traffic worker-1,worker-2 -->   requests through the load balancer reach
//	                                       exactly the instances on these machines
//	<!-- deploy-test: poweroff worker-2 -->   every process of the machine is killed at once
//	<!-- deploy-test: requests start -->  requests go on through the load balancer, one after
//	<!-- deploy-test: requests stop -->   the other, from start to stop, and every one is answered
type step struct {
	kind   string // run, file, traffic, poweroff or requests
	target string // machine names (comma-separated), "workers" or "all"; traffic: the machines
	text   string // the block's content
	line   int    // of the marker in the doc
}

var marker = regexp.MustCompile(`^<!-- deploy-test: (run|file|traffic|poweroff|requests) (\S+) -->$`)

// parseDoc returns the marked steps of a markdown document.
func parseDoc(doc string) ([]step, error) {
	var steps []step
	sc := bufio.NewScanner(strings.NewReader(doc))
	n := 0
	next := func() (string, bool) {
		if !sc.Scan() {
			return "", false
		}
		n++
		return sc.Text(), true
	}
	for {
		line, ok := next()
		if !ok {
			break
		}
		if strings.Contains(line, "deploy-test:") && !marker.MatchString(line) && strings.HasPrefix(line, "<!--") {
			return nil, fmt.Errorf("line %d: malformed marker %q", n, line)
		}
		m := marker.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		s := step{kind: m[1], target: m[2], line: n}
		if s.kind == "traffic" || s.kind == "poweroff" || s.kind == "requests" {
			steps = append(steps, s)
			continue
		}
		fence, ok := next()
		if !ok || !strings.HasPrefix(fence, "```") {
			return nil, fmt.Errorf("line %d: marker not followed by a fenced block", s.line)
		}
		var body []string
		closed := false
		for {
			l, ok := next()
			if !ok {
				break
			}
			if strings.HasPrefix(l, "```") {
				closed = true
				break
			}
			body = append(body, l)
		}
		if !closed {
			return nil, fmt.Errorf("line %d: fenced block never closed", s.line)
		}
		s.text = strings.Join(body, "\n") + "\n"
		if s.kind == "file" && filePath(s.text) == "" {
			return nil, fmt.Errorf("line %d: a file block starts with \"# /path\"", s.line)
		}
		steps = append(steps, s)
	}
	return steps, sc.Err()
}

// filePath is the path named by a file block's first line ("# /etc/x  (note)").
func filePath(text string) string {
	first, _, _ := strings.Cut(text, "\n")
	f := strings.Fields(strings.TrimPrefix(first, "#"))
	if !strings.HasPrefix(first, "# /") || len(f) == 0 {
		return ""
	}
	return f[0]
}

func TestParseDoc(t *testing.T) {
	for _, tc := range []struct {
		name string
		doc  string
		want []step
		err  string
	}{
		{
			name: "run, file and traffic in order",
			doc: "intro\n<!-- deploy-test: file all -->\n```ini\n# /etc/x.env  (mode 0640)\nA=1\n```\n" +
				"text\n<!-- deploy-test: run lb,worker-1 -->\n```sh\necho hi\n```\n<!-- deploy-test: traffic worker-1 -->\n<!-- deploy-test: poweroff worker-2 -->\n",
			want: []step{
				{kind: "file", target: "all", text: "# /etc/x.env  (mode 0640)\nA=1\n", line: 2},
				{kind: "run", target: "lb,worker-1", text: "echo hi\n", line: 8},
				{kind: "traffic", target: "worker-1", line: 12},
				{kind: "poweroff", target: "worker-2", line: 13},
			},
		},
		{name: "unmarked blocks are not steps", doc: "```sh\nrm -rf /\n```\n"},
		{name: "marker without block", doc: "<!-- deploy-test: run lb -->\ntext\n", err: "not followed by a fenced block"},
		{name: "unclosed block", doc: "<!-- deploy-test: run lb -->\n```sh\necho\n", err: "never closed"},
		{name: "file without path", doc: "<!-- deploy-test: file lb -->\n```\nA=1\n```\n", err: "# /path"},
		{name: "unknown kind", doc: "<!-- deploy-test: skip lb -->\n", err: "malformed marker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseDoc(tc.doc)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}
