// Command funclen fails when a function outside the tests is longer than
// 120 lines (make fmt-check): such a function is split before it is merged.
// It reads every .go file below the current directory but _test.go files,
// testdata and hidden directories.
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
	var bad []string
	for _, f := range long {
		bad = append(bad, fmt.Sprintf("%s: %d lines", f.name, f.lines))
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
