-- Seed schema for Gatehouse's end-to-end tests and demo: an orders database an
-- agent might work on, and a table of secret-looking values that masking must
-- never let through. Every "secret" here is a made-up test value.

CREATE TABLE customers (
    id          bigint PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id           bigint PRIMARY KEY,
    customer_id  bigint NOT NULL REFERENCES customers (id),
    item         text NOT NULL,
    amount_cents integer NOT NULL CHECK (amount_cents >= 0),
    status       text NOT NULL DEFAULT 'open',
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- Values shaped like real credentials, in text, varchar, jsonb and bytea.
CREATE TABLE api_credentials (
    id        bigint PRIMARY KEY,
    service   varchar(64) NOT NULL,
    api_key   text NOT NULL UNIQUE,
    config    jsonb NOT NULL,
    blob      bytea,
    note      text
);

INSERT INTO customers (id, name, email)
SELECT i, 'Customer ' || i, 'customer' || i || '@example.com'
FROM generate_series(1, 100) AS i;

INSERT INTO orders (id, customer_id, item, amount_cents, status)
SELECT i, 1 + (i % 100), 'item-' || (i % 17), (i * 137) % 10000,
       CASE WHEN i % 5 = 0 THEN 'shipped' ELSE 'open' END
FROM generate_series(1, 1000) AS i;

INSERT INTO api_credentials (id, service, api_key, config, blob, note) VALUES
 (1, 'aws',    'AKIAIOSFODNN7EXAMPLE',
     '{"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}',
     convert_to('aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY', 'UTF8'),
     'documented AWS example key'),
 (2, 'github', 'ghp_R7nX2kLp9QvT4mZs8WcY1bJd6HfA3eGu0oNi',
     '{"token": "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ012345"}',
     NULL, 'classic and fine-grained tokens'),
 (3, 'slack',  'xoxb-1234567890-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx',
     '{"webhook": "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX"}',
     NULL, 'bot token'),
 (4, 'stripe', 'sk_live_51H8xYzAbCdEfGhIjKlMnOpQr',
     '{"publishable": "pk_live_51H8xYzAbCdEfGhIjKlMnOpQr"}',
     NULL, 'live secret key'),
 (5, 'postgres', 'postgres://reporter:S3cr3tPassw0rd@db.internal:5432/reports',
     '{"dsn": "postgresql://reporter:S3cr3tPassw0rd@db.internal/reports"}',
     NULL, 'credentials inside a connection string'),
 (6, 'internal', 'password=hunter2-but-longer',
     '{"secret": "token: abcdef0123456789abcdef0123456789"}',
     NULL, 'generic assignments');

-- Functions an agent might find: a STABLE report, a VOLATILE purge that
-- deletes, an aggregate and an operator that call it, and extensions whose
-- functions act outside the tables. A read-only agent may call the report
-- and none of the others.
CREATE FUNCTION open_order_count() RETURNS bigint
    LANGUAGE sql STABLE AS $$ SELECT count(*) FROM orders WHERE status = 'open' $$;
CREATE FUNCTION purge_orders() RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE n bigint;
BEGIN
    DELETE FROM orders WHERE status = 'shipped';
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
CREATE FUNCTION purge_step(total bigint, id bigint) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM orders WHERE orders.id = purge_step.id;
    RETURN coalesce(total, 0) + 1;
END $$;
-- PostgreSQL marks every aggregate IMMUTABLE, whatever its state function does.
CREATE AGGREGATE purge_all(bigint) (SFUNC = purge_step, STYPE = bigint);
CREATE FUNCTION purge_eq(a bigint, b bigint) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM orders WHERE id = a;
    RETURN a = b;
END $$;
CREATE OPERATOR ### (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = purge_eq);
CREATE EXTENSION pg_surgery;
CREATE EXTENSION pg_stat_statements;
CREATE EXTENSION tablefunc;
-- Called as o.purge_order or (o).purge_order (attribute notation), it is a
-- column to the eye and a call to the server.
CREATE FUNCTION purge_order(o orders) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM orders WHERE id = o.id;
    RETURN o.id;
END $$;
-- An IMMUTABLE comparison whose negator deletes: the planner rewrites
-- NOT (a === b) as a !== b, which no statement names.
CREATE FUNCTION same_id(a bigint, b bigint) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS $$ SELECT a = b $$;
CREATE FUNCTION purge_ne(a bigint, b bigint) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM orders WHERE id = a;
    RETURN a <> b;
END $$;
CREATE OPERATOR !== (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = purge_ne);
CREATE OPERATOR === (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = same_id, NEGATOR = !==);
-- Extra arguments with defaults still allow o.purge_some (attribute notation).
CREATE FUNCTION purge_some(o orders, why text DEFAULT 'cleanup') RETURNS bigint
    LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    DELETE FROM orders WHERE id = o.id;
    RETURN o.id;
END $$;
