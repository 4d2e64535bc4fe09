package main

import (
	"fmt"
	"regexp"
	"regexp/syntax"
	"strings"
)

// The Go RE2 dialect and the Rust regex crate read a few things differently.
// RustRegex rewrites a gitleaks pattern so that the Rust crate, built with
// unicode(false) and matching bytes, reads it as Go does on ASCII text:
//
//   - \s is [\t\n\f\r ] in Go but [\t\n\v\f\r ] in Rust's ASCII mode: \s is
//     written out as [\t\n\f\r ] (inside a class: \t\n\f\r ), and \S as
//     [^\t\n\f\r ] (inside a class: the nested class [^\t\n\f\r ]).
//   - A '{' that does not start a valid repetition ({n}, {n,}, {n,m}) is a
//     literal in Go and a syntax error in Rust: it is escaped, \{.
//   - Inside a class, '[' (other than a POSIX [:name:] class) is a literal in
//     Go and starts a nested class in Rust: it is escaped, \[. Likewise the
//     doubled '&&', '~~' and '--', set operators in Rust, are refused.
//   - Constructs Rust does not have or reads differently (\Q...\E, \C, octal
//     escapes \1 to \7, \< and \>, \pN one-letter classes are fine) make the
//     import fail rather than change meaning.
//
// Every rewrite is checked: the original and the rewritten pattern (with a
// nested \S class spelled out as Go can read it) must parse in Go to the same
// simplified syntax tree.
func RustRegex(p string) (string, []string, error) {
	var rust, goForm strings.Builder
	var notes []string
	note := func(s string) {
		for _, n := range notes {
			if n == s {
				return
			}
		}
		notes = append(notes, s)
	}
	both := func(s string) { rust.WriteString(s); goForm.WriteString(s) }
	inClass := false
	classStart := 0 // index just past "[" or "[^"
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '\\':
			if i+1 >= len(p) {
				return "", nil, fmt.Errorf("trailing backslash")
			}
			n := p[i+1]
			i++
			switch {
			case n == 's' && !inClass:
				both(`[\t\n\f\r ]`)
				note(`\s -> [\t\n\f\r ]`)
			case n == 'S' && !inClass:
				both(`[^\t\n\f\r ]`)
				note(`\S -> [^\t\n\f\r ]`)
			case n == 's' && inClass:
				both(`\t\n\f\r `)
				note(`\s -> [\t\n\f\r ]`)
			case n == 'S' && inClass:
				rust.WriteString(`[^\t\n\f\r ]`)
				goForm.WriteString(`\x00-\x08\x0B\x0E-\x1F!-\x{10FFFF}`)
				note(`\S in a class -> nested [^\t\n\f\r ]`)
			case n == 'Q' || n == 'E' || n == 'C' || (n >= '0' && n <= '7') || n == '<' || n == '>':
				return "", nil, fmt.Errorf(`unsupported escape \%c at %d`, n, i-1)
			case (n == 'x' || n == 'p' || n == 'P') && i+1 < len(p) && p[i+1] == '{':
				end := strings.IndexByte(p[i:], '}')
				if end < 0 {
					return "", nil, fmt.Errorf(`unterminated \%c{ at %d`, n, i-1)
				}
				both(p[i-1 : i+end+1])
				i += end
			default:
				both(p[i-1 : i+1])
			}
		case inClass:
			switch {
			case c == ']' && i > classStart:
				inClass = false
				both("]")
			case c == ']':
				both(`\]`) // a leading ']' is a literal in both; escaped for clarity
			case c == '[' && strings.HasPrefix(p[i:], "[:"):
				end := strings.Index(p[i:], ":]")
				if end < 0 {
					return "", nil, fmt.Errorf("unterminated [: at %d", i)
				}
				both(p[i : i+end+2])
				i += end + 1
			case c == '[':
				both(`\[`)
				note(`literal [ in a class -> \[`)
			case (c == '&' || c == '~' || c == '-') && i+1 < len(p) && p[i+1] == c:
				return "", nil, fmt.Errorf("doubled %c%c in a class at %d", c, c, i)
			default:
				both(string(c))
			}
		case c == '[':
			inClass = true
			both("[")
			if i+1 < len(p) && p[i+1] == '^' {
				both("^")
				i++
			}
			classStart = i + 1
		case c == '{':
			if repeatRE.MatchString(p[i:]) {
				both("{")
			} else {
				both(`\{`)
				note(`literal { -> \{`)
			}
		default:
			both(string(c))
		}
	}
	if inClass {
		return "", nil, fmt.Errorf("unterminated class")
	}
	if err := sameInGo(p, goForm.String()); err != nil {
		return "", nil, err
	}
	return rust.String(), notes, nil
}

// repeatRE is the repetition syntax Go accepts after '{'.
var repeatRE = regexp.MustCompile(`^\{[0-9]+(?:,[0-9]*)?\}`)

func sameInGo(orig, rewritten string) error {
	a, err := syntax.Parse(orig, syntax.Perl)
	if err != nil {
		return fmt.Errorf("Go cannot parse the original: %w", err)
	}
	b, err := syntax.Parse(rewritten, syntax.Perl)
	if err != nil {
		return fmt.Errorf("Go cannot parse the rewrite %q: %w", rewritten, err)
	}
	if a.Simplify().String() != b.Simplify().String() {
		return fmt.Errorf("rewrite changes the meaning in Go:\n  %s\n  %s", a.Simplify(), b.Simplify())
	}
	return nil
}
