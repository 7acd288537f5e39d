// Command funclen fails when a function outside the tests is longer than
// 120 lines (make fmt-check): such a function is split before it is merged.
// It reads every .go file below the current directory but _test.go files,
// testdata and hidden directories.
//
// The functions in knownLong are reported but do not fail the check; each is
// to be split, and taken off the list then (funclen says when an entry no
// longer applies).
package main

import (
	"context"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"

	"github.com/flotilla/flotilla/internal/cmdline"
)

// maxLines is the longest a function may be, from its func line to its
// closing brace.
const maxLines = 120

// knownLong returns the functions, as "dir/file.go:Func" (methods as
// "Type.Method"), that are longer than maxLines and have yet to be split.
func knownLong() map[string]bool {
	return map[string]bool{
		"internal/engine/engine.go:Engine.plan": true,
	}
}

func main() { cmdline.Main("funclen", run) }

func run(_ context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 1 {
		return cmdline.Usagef("usage: funclen [DIR]")
	}
	root := "."
	if len(args) == 1 {
		root = args[0]
	}
	long, err := longFuncs(root)
	if err != nil {
		return err
	}
	known := knownLong()
	var bad []string
	for _, f := range long {
		if known[f.name] {
			fmt.Fprintf(stderr, "funclen: %s: %d lines (a known exception, to be split)\n", f.name, f.lines)
			delete(known, f.name)
			continue
		}
		bad = append(bad, fmt.Sprintf("%s: %d lines", f.name, f.lines))
	}
	stale := make([]string, 0, len(known))
	for name := range known {
		stale = append(stale, name)
	}
	sort.Strings(stale)
	for _, name := range stale {
		fmt.Fprintf(stderr, "funclen: %s is no longer over %d lines (or gone): take it off knownLong\n", name, maxLines)
	}
	if len(bad) > 0 {
		return fmt.Errorf("functions over %d lines (split them): %s", maxLines, strings.Join(bad, "; "))
	}
	return nil
}

type longFunc struct {
	name  string // dir/file.go:Func or dir/file.go:Type.Method
	lines int
}

// longFuncs returns the functions over maxLines below root, by name.
func longFuncs(root string) ([]longFunc, error) {
	var out []longFunc
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != root && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") || strings.HasPrefix(d.Name(), "_")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("funclen: %w", err)
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok || fd.Body == nil {
				continue
			}
			n := fset.Position(fd.End()).Line - fset.Position(fd.Pos()).Line + 1
			if n > maxLines {
				out = append(out, longFunc{name: filepath.ToSlash(rel) + ":" + funcName(fd), lines: n})
			}
		}
		return nil
	})
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out, err
}

// funcName is Func, or Type.Method for a method.
func funcName(fd *ast.FuncDecl) string {
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return fd.Name.Name
	}
	t := fd.Recv.List[0].Type
	if s, ok := t.(*ast.StarExpr); ok {
		t = s.X
	}
	if ix, ok := t.(*ast.IndexExpr); ok { // a generic type
		t = ix.X
	}
	if id, ok := t.(*ast.Ident); ok {
		return id.Name + "." + fd.Name.Name
	}
	return fd.Name.Name
}
