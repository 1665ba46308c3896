-- Semantic join across languages: each order (in 8 languages) with the 2 closest products of an
-- English catalog, exact top-k with BLAS, no vss needed.
--   polyemb sql --index products "SELECT id AS key, name AS text FROM 'udfs/data/products.csv'" \
--       -f udfs/duckdb/semantic_join.sql
-- --index holds the catalog's vectors in memory and registers products_nearest(text, k), which
-- returns the k best rows as a list of STRUCT(key, score), best first.
-- (In Python: polyemb.duckdb.register_index(con, "products", query, key="id", text="name").)
SELECT
    o.lang,
    o.description AS order_text,
    p.name AS product,
    round(n.score, 3) AS score
FROM 'udfs/data/orders.csv' AS o,
    unnest(products_nearest(o.description, 2)) AS t(n)
JOIN 'udfs/data/products.csv' AS p ON p.id = n.key
ORDER BY o.id, n.score DESC;
