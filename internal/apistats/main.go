// Command apistats prints, for the Go packages under a directory, the
// exported API per package (functions, methods of exported types, types,
// and exported package-level constants and variables, each counted once)
// and the longest functions: what docs/architecture.md's "API size"
// section shows before and after a change. Run it with Go's own tools:
//
//	go run ./internal/apistats [-top 10] [DIR]   (DIR defaults to svckit)
//
// Test files are left out. It parses only, so it also reads an old
// checkout (git worktree add /tmp/old REV; go run ./internal/apistats
// /tmp/old/svckit).
package main

import (
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

func main() {
	top := flag.Int("top", 10, "how many of the longest functions to list")
	flag.Parse()
	dir := "svckit"
	if flag.NArg() > 0 {
		dir = flag.Arg(0)
	}
	if err := run(dir, *top); err != nil {
		fmt.Fprintln(os.Stderr, "apistats:", err)
		os.Exit(1)
	}
}

type fn struct {
	name  string
	lines int
}

func run(dir string, top int) error {
	fset := token.NewFileSet()
	api := map[string]int{} // package dir → exported identifiers
	var fns []fn
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return fmt.Errorf("parsing %s: %w", path, err)
		}
		if f.Name.Name == "main" {
			return nil
		}
		pkg, _ := filepath.Rel(dir, filepath.Dir(path))
		for _, decl := range f.Decls {
			switch d := decl.(type) {
			case *ast.FuncDecl:
				n := fset.Position(d.End()).Line - fset.Position(d.Pos()).Line + 1
				name := d.Name.Name
				if d.Recv != nil && len(d.Recv.List) == 1 {
					name = recvName(d.Recv.List[0].Type) + "." + name
				}
				fns = append(fns, fn{pkg + ": " + name, n})
				if d.Name.IsExported() && (d.Recv == nil || ast.IsExported(recvName(d.Recv.List[0].Type))) {
					api[pkg]++
				}
			case *ast.GenDecl:
				for _, s := range d.Specs {
					switch s := s.(type) {
					case *ast.TypeSpec:
						if s.Name.IsExported() {
							api[pkg]++
						}
					case *ast.ValueSpec:
						for _, n := range s.Names {
							if n.IsExported() {
								api[pkg]++
							}
						}
					}
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	pkgs := make([]string, 0, len(api))
	total := 0
	for p, n := range api {
		pkgs = append(pkgs, p)
		total += n
	}
	sort.Strings(pkgs)
	fmt.Printf("exported API under %s: %d identifiers in %d packages\n", dir, total, len(pkgs))
	for _, p := range pkgs {
		fmt.Printf("  %-28s %4d\n", p, api[p])
	}
	sort.Slice(fns, func(i, j int) bool { return fns[i].lines > fns[j].lines })
	fmt.Printf("longest functions:\n")
	for i := 0; i < top && i < len(fns); i++ {
		fmt.Printf("  %4d lines  %s\n", fns[i].lines, fns[i].name)
	}
	return nil
}

func recvName(e ast.Expr) string {
	switch t := e.(type) {
	case *ast.StarExpr:
		return recvName(t.X)
	case *ast.IndexExpr:
		return recvName(t.X)
	case *ast.IndexListExpr:
		return recvName(t.X)
	case *ast.Ident:
		return t.Name
	}
	return ""
}
