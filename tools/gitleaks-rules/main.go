// Command gitleaks-rules imports gitleaks' default rule set into Gatehouse.
//
// It fetches the pinned gitleaks module, copies its source into a scratch
// directory, patches the config generator so that every rule records the
// examples it passes to utils.Validate (and so that generated example secrets
// are seeded), runs every rule function listed in the generator's main.go,
// and writes the rules as a Rust table (see rust.go).
//
// Run it through import.sh.
package main

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The pinned gitleaks release. The hash is the go.sum "h1:" hash of the
// module zip; a download that does not match it is refused.
const (
	gitleaksModule  = "github.com/zricethezav/gitleaks/v8"
	gitleaksVersion = "v8.30.0"
	gitleaksSum     = "h1:5heLlxRQkHfXgTJgdQsJhi/evX1oj6i+xBanDu2XUM8="
)

var (
	//go:embed dump.go.tmpl
	dumpTemplate string
	//go:embed capture.go.tmpl
	captureSource string
	//go:embed seed.go.tmpl
	seedSource string
)

func main() {
	log.SetFlags(0)
	log.SetPrefix("gitleaks-rules: ")
	out := flag.String("out", "", "the Rust file to write")
	jsonOut := flag.String("json", "", "also write the raw dump of the gitleaks rules here")
	keep := flag.Bool("keep", false, "keep the scratch copy of the gitleaks source")
	flag.Parse()
	if *out == "" {
		log.Fatal("-out is required")
	}

	mod := download()
	tmp, err := os.MkdirTemp("", "gitleaks-rules-")
	check(err)
	if *keep {
		log.Printf("scratch copy: %s", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	src := filepath.Join(tmp, "gitleaks")
	copyTree(mod.Dir, src)
	patch(src)

	var stdout bytes.Buffer
	cmd := exec.Command("go", "run", "./cmd/gatehouse-dump")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	cmd.Stdout = &stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		if !*keep {
			os.RemoveAll(tmp)
		}
		log.Fatalf("running the patched gitleaks generator: %v", err)
	}
	if *jsonOut != "" {
		check(os.WriteFile(*jsonOut, stdout.Bytes(), 0o644))
	}
	var d Dump
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	check(dec.Decode(&d))

	license, err := os.ReadFile(filepath.Join(mod.Dir, "LICENSE"))
	check(err)
	src2 := Source{Module: gitleaksModule, Version: mod.Version, Commit: mod.Origin.Hash, License: string(license)}
	rust, report := Emit(src2, d)
	check(os.WriteFile(*out, rust, 0o644))
	fmt.Fprintln(os.Stderr, report)
}

type module struct {
	Version string
	Dir     string
	Sum     string
	Error   string
	Origin  struct{ Hash string }
}

// download fetches the pinned module into the module cache (through the
// configured GOPROXY, checked against the checksum database) and checks it
// against the pinned hash.
func download() module {
	cmd := exec.Command("go", "mod", "download", "-json", gitleaksModule+"@"+gitleaksVersion)
	cmd.Stderr = os.Stderr
	cmd.Env = append(os.Environ(), "GOWORK=off")
	b, err := cmd.Output()
	var m module
	if jerr := json.Unmarshal(b, &m); jerr != nil || err != nil || m.Error != "" {
		log.Fatalf("go mod download %s@%s: %v %v %s", gitleaksModule, gitleaksVersion, err, jerr, m.Error)
	}
	if m.Sum != gitleaksSum {
		log.Fatalf("%s@%s has hash %s, pinned %s", gitleaksModule, gitleaksVersion, m.Sum, gitleaksSum)
	}
	return m
}

// copyTree copies the module source, writable, without its test data.
func copyTree(from, to string) {
	check(filepath.WalkDir(from, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		dst := filepath.Join(to, rel)
		if e.IsDir() {
			if rel == "testdata" {
				return filepath.SkipDir
			}
			return os.MkdirAll(dst, 0o755)
		}
		if !e.Type().IsRegular() {
			return nil
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		outf, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return err
		}
		if _, err := io.Copy(outf, in); err != nil {
			outf.Close()
			return err
		}
		return outf.Close()
	}))
}

// patch makes the generator record what it validates and seeds its random
// example secrets. Every edit must apply exactly once, so that a new gitleaks
// release that moved things fails here instead of producing a wrong table.
func patch(src string) {
	replaceOnce(filepath.Join(src, "cmd/generate/config/utils/validate.go"),
		"func Validate(rule config.Rule,", "func gatehouseValidate(rule config.Rule,")
	replaceOnce(filepath.Join(src, "cmd/generate/config/utils/validate.go"),
		"func ValidateWithPaths(rule config.Rule,", "func gatehouseValidateWithPaths(rule config.Rule,")
	writeFile(filepath.Join(src, "cmd/generate/config/utils/gatehouse_capture.go"), captureSource)

	replaceOnce(filepath.Join(src, "cmd/generate/secrets/regen.go"),
		"\treturn g.Generate(1)\n", "\tg.SetSeed(gatehouseSeed(regex))\n\treturn g.Generate(1)\n")
	writeFile(filepath.Join(src, "cmd/generate/secrets/gatehouse_seed.go"), seedSource)

	calls := ruleCalls(filepath.Join(src, "cmd/generate/config/main.go"))
	var names []string
	for _, c := range calls {
		names = append(names, fmt.Sprintf("%q,", c))
	}
	dump := dumpTemplate
	dump = strings.Replace(dump, "/*CALL_NAMES*/", strings.Join(names, "\n\t\t"), 1)
	dump = strings.Replace(dump, "/*CALLS*/", strings.Join(calls, ",\n\t\t")+",", 1)
	check(os.MkdirAll(filepath.Join(src, "cmd/gatehouse-dump"), 0o755))
	writeFile(filepath.Join(src, "cmd/gatehouse-dump/main.go"), dump)
}

// ruleCalls returns the elements of the configRules slice literal in the
// generator's main.go, e.g. "rules.AWS()", in order.
func ruleCalls(path string) []string {
	b, err := os.ReadFile(path)
	check(err)
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, b, 0)
	check(err)
	var calls []string
	found := 0
	ast.Inspect(f, func(n ast.Node) bool {
		as, ok := n.(*ast.AssignStmt)
		if !ok || len(as.Lhs) != 1 || len(as.Rhs) != 1 {
			return true
		}
		if id, ok := as.Lhs[0].(*ast.Ident); !ok || id.Name != "configRules" {
			return true
		}
		lit, ok := as.Rhs[0].(*ast.CompositeLit)
		if !ok {
			log.Fatalf("%s: configRules is not a slice literal", path)
		}
		found++
		for _, e := range lit.Elts {
			call, ok := e.(*ast.CallExpr)
			if !ok || len(call.Args) != 0 {
				log.Fatalf("%s: unexpected element %s of configRules", path, b[fset.Position(e.Pos()).Offset:fset.Position(e.End()).Offset])
			}
			calls = append(calls, string(b[fset.Position(e.Pos()).Offset:fset.Position(e.End()).Offset]))
		}
		return false
	})
	if found != 1 || len(calls) == 0 {
		log.Fatalf("%s: found %d configRules literals with %d calls", path, found, len(calls))
	}
	return calls
}

func replaceOnce(path, old, new string) {
	b, err := os.ReadFile(path)
	check(err)
	if n := strings.Count(string(b), old); n != 1 {
		log.Fatalf("%s: expected exactly one %q, found %d", path, old, n)
	}
	writeFile(path, strings.Replace(string(b), old, new, 1))
}

func writeFile(path, content string) {
	check(os.WriteFile(path, []byte(content), 0o644))
}

func check(err error) {
	if err != nil {
		log.Fatal(err)
	}
}
