//go:build tools

// Package tools pins the versitygw command.
package tools

import _ "github.com/versity/versitygw/cmd/versitygw"
