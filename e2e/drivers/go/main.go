// Command scenario runs the drivers scenario (see ../README.md) in pgx v5.
// It connects with the PG* environment variables and prints one JSON document.
package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

const text = "Zürich – 🐘 日本語 ‘quotes’ \\ $1"

var (
	byteValues = []byte{0, 1, 0x27, 0x5c, 0x7f, 0x80, 0xff}
	instant    = time.Date(2024, 2, 29, 12, 34, 56, 789_000_000, time.UTC)
)

const numericText = "-12345678901234567890.000123"

type sqlError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func asError(err error) *sqlError {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return &sqlError{Code: pgErr.Code, Message: pgErr.Message}
	}
	return &sqlError{Code: "", Message: err.Error()}
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "scenario failed: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, "")
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(ctx)
	out := map[string]any{}

	var user string
	if err := conn.QueryRow(ctx, "SELECT current_user").Scan(&user); err != nil {
		return fmt.Errorf("current_user: %w", err)
	}
	out["user"] = user

	rows, err := conn.Query(ctx, "SELECT id, item, amount_cents FROM orders WHERE customer_id = $1 AND status = $2 ORDER BY id", 5, "open")
	if err != nil {
		return fmt.Errorf("param select: %w", err)
	}
	paramSelect, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]any, error) {
		var id int64
		var item string
		var amount int32
		err := r.Scan(&id, &item, &amount)
		return []any{id, item, amount}, err
	})
	if err != nil {
		return fmt.Errorf("param select: %w", err)
	}
	out["param_select"] = paramSelect

	if _, err := conn.Prepare(ctx, "item_by_id", "SELECT item FROM orders WHERE id = $1"); err != nil {
		return fmt.Errorf("prepare: %w", err)
	}
	prepared := []string{}
	for _, id := range []int64{1, 7, 500, 1000} {
		var item string
		if err := conn.QueryRow(ctx, "item_by_id", id).Scan(&item); err != nil {
			return fmt.Errorf("prepared %d: %w", id, err)
		}
		prepared = append(prepared, item)
	}
	out["prepared"] = prepared

	tx, err := conn.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	if _, err := tx.Exec(ctx, "SELECT 1"); err != nil {
		return fmt.Errorf("select in tx: %w", err)
	}
	_, refused := tx.Exec(ctx, "DROP TABLE orders")
	var one int
	after := tx.QueryRow(ctx, "SELECT 1").Scan(&one)
	if err := tx.Rollback(ctx); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	var afterRollback int
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&afterRollback); err != nil {
		return fmt.Errorf("after rollback: %w", err)
	}
	out["tx"] = map[string]any{"refused": asError(refused), "after": asError(after), "after_rollback": afterRollback}

	_, ddlErr := conn.Exec(ctx, "DROP TABLE orders")
	var count int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&count); err != nil {
		return fmt.Errorf("count after DROP: %w", err)
	}
	out["ddl"] = map[string]any{"refused": asError(ddlErr), "count_after": count}

	var numeric pgtype.Numeric
	if err := numeric.Scan(numericText); err != nil {
		return fmt.Errorf("numeric literal: %w", err)
	}
	var (
		null    *string
		t       string
		b       []byte
		num     pgtype.Numeric
		ts      time.Time
		isNull  bool
		noValue *int32
	)
	err = conn.QueryRow(ctx, "SELECT $1::text, $2::text, $3::bytea, $4::numeric, $5::timestamptz, $6::int IS NULL",
		nil, text, byteValues, numeric, instant, noValue).Scan(&null, &t, &b, &num, &ts, &isNull)
	if err != nil {
		return fmt.Errorf("types: %w", err)
	}
	numValue, err := num.Value()
	if err != nil {
		return fmt.Errorf("numeric value: %w", err)
	}
	out["types"] = map[string]any{
		"null":           null,
		"text":           t,
		"bytea":          hex.EncodeToString(b),
		"numeric":        numValue,
		"timestamptz_ms": ts.UnixMilli(),
		"is_null":        isNull,
		"same":           []bool{t == text, bytes.Equal(b, byteValues), numValue == numericText, ts.Equal(instant)},
	}

	rows, err = conn.Query(ctx, "SELECT id, item, status FROM orders WHERE id <= 25 ORDER BY id")
	if err != nil {
		return fmt.Errorf("rows: %w", err)
	}
	many, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) ([]any, error) {
		var id int64
		var item, status string
		err := r.Scan(&id, &item, &status)
		return []any{id, item, status}, err
	})
	if err != nil {
		return fmt.Errorf("rows: %w", err)
	}
	out["rows"] = many

	var copied bytes.Buffer
	if _, err := conn.PgConn().CopyTo(ctx, &copied, "COPY (SELECT id, item FROM orders WHERE id <= 5 ORDER BY id) TO STDOUT"); err != nil {
		return fmt.Errorf("copy: %w", err)
	}
	out["copy"] = copied.String()

	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	return enc.Encode(out)
}
