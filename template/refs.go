package template

import (
	"slices"
	"strconv"
	"strings"
	texttemplate "text/template"
	"text/template/parse"
)

// KeyRef is a constant key or pattern a template passes to a store function,
// found without rendering (for -check-config: "is this key under the
// resource's keys?").
type KeyRef struct {
	Func string // get, getv, gets, getvs, exists, ls or lsdir
	Arg  string // the key, pattern or directory, as written
	Line int    // line in the template
}

var storeFuncNames = map[string]bool{
	"get": true, "getv": true, "gets": true, "getvs": true, "exists": true, "ls": true, "lsdir": true,
}

// KeyRefs lists every call of a store function whose first argument is a
// string constant: the main template's in order, then those of each
// {{define}}d template by name. Keys built at render time (printf,
// variables) are not listed. Safe for concurrent use.
func (t *Template) KeyRefs() []KeyRef {
	var refs []KeyRef
	trees := []*texttemplate.Template{t.base}
	others := t.base.Templates()
	slices.SortFunc(others, func(a, b *texttemplate.Template) int { return strings.Compare(a.Name(), b.Name()) })
	for _, o := range others {
		if o.Name() != t.base.Name() {
			trees = append(trees, o)
		}
	}
	for _, tt := range trees {
		if tt.Tree != nil && tt.Tree.Root != nil {
			walkRefs(tt.Tree, tt.Tree.Root, &refs)
		}
	}
	return refs
}

func walkRefs(tree *parse.Tree, n parse.Node, refs *[]KeyRef) {
	switch n := n.(type) {
	case *parse.ListNode:
		if n == nil {
			return
		}
		for _, c := range n.Nodes {
			walkRefs(tree, c, refs)
		}
	case *parse.ActionNode:
		walkRefs(tree, n.Pipe, refs)
	case *parse.IfNode:
		walkBranch(tree, &n.BranchNode, refs)
	case *parse.RangeNode:
		walkBranch(tree, &n.BranchNode, refs)
	case *parse.WithNode:
		walkBranch(tree, &n.BranchNode, refs)
	case *parse.ChainNode:
		walkRefs(tree, n.Node, refs)
	case *parse.TemplateNode:
		if n.Pipe != nil {
			walkRefs(tree, n.Pipe, refs)
		}
	case *parse.PipeNode:
		if n == nil {
			return
		}
		for _, c := range n.Cmds {
			walkRefs(tree, c, refs)
		}
	case *parse.CommandNode:
		if len(n.Args) >= 2 {
			id, ok1 := n.Args[0].(*parse.IdentifierNode)
			s, ok2 := n.Args[1].(*parse.StringNode)
			if ok1 && ok2 && storeFuncNames[id.Ident] {
				*refs = append(*refs, KeyRef{Func: id.Ident, Arg: s.Text, Line: lineOf(tree, n)})
			}
		}
		for _, a := range n.Args {
			walkRefs(tree, a, refs)
		}
	}
}

func walkBranch(tree *parse.Tree, b *parse.BranchNode, refs *[]KeyRef) {
	walkRefs(tree, b.Pipe, refs)
	walkRefs(tree, b.List, refs)
	if b.ElseList != nil {
		walkRefs(tree, b.ElseList, refs)
	}
}

// lineOf returns n's line from the tree's "name:line:col" location.
func lineOf(tree *parse.Tree, n parse.Node) int {
	loc, _ := tree.ErrorContext(n)
	parts := strings.Split(loc, ":")
	if len(parts) < 3 {
		return 0
	}
	line, _ := strconv.Atoi(parts[len(parts)-2])
	return line
}
