package main

// The JSON written by the patched generator (dump.go.tmpl).

type Dump struct {
	RegexEngine string      `json:"regexEngine"`
	Rules       []DumpRule  `json:"rules"`
	Global      []Allowlist `json:"global"`
}

type Allowlist struct {
	Description string   `json:"description"`
	Condition   string   `json:"condition"`
	RegexTarget string   `json:"regexTarget"`
	Regexes     []string `json:"regexes"`
	StopWords   []string `json:"stopwords"`
	Paths       []string `json:"paths"`
	Commits     []string `json:"commits"`
}

type Required struct {
	RuleID        string `json:"ruleID"`
	WithinLines   *int   `json:"withinLines"`
	WithinColumns *int   `json:"withinColumns"`
}

type Example struct {
	Path string `json:"path,omitempty"`
	Text string `json:"text"`
}

type DumpRule struct {
	Call          string      `json:"call"`
	ID            string      `json:"id"`
	Description   string      `json:"description"`
	Regex         string      `json:"regex"`
	Path          string      `json:"path"`
	SecretGroup   int         `json:"secretGroup"`
	Entropy       float64     `json:"entropy"`
	Keywords      []string    `json:"keywords"`
	Tags          []string    `json:"tags"`
	Allowlists    []Allowlist `json:"allowlists"`
	RequiredRules []Required  `json:"requiredRules"`
	SkipReport    bool        `json:"skipReport"`
	ValidatedBy   string      `json:"validatedBy"`
	TPs           []Example   `json:"tps"`
	FPs           []Example   `json:"fps"`
}

// Source names where the rules came from.
type Source struct {
	Module, Version, Commit, License string
}
