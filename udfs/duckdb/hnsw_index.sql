-- An HNSW index (DuckDB's vss extension) for fast approximate nearest-neighbour search.
--   polyemb sql --extension vss -f udfs/duckdb/hnsw_index.sql
-- (In plain DuckDB: INSTALL vss; LOAD vss; where the extension repository is reachable. On an
-- air-gapped machine: pip install duckdb-extension-vss, which ships it for duckdb 1.5.5.)
-- embed() returns FLOAT[dim], the fixed-size ARRAY type the index needs: no cast.
CREATE TABLE article_vectors AS
    SELECT id, lang, title, embed(title) AS v FROM 'udfs/data/articles.csv';

CREATE INDEX article_vectors_hnsw ON article_vectors USING HNSW (v) WITH (metric = 'cosine');

-- ORDER BY array_cosine_distance(...) LIMIT k is answered by the index (see EXPLAIN: HNSW_INDEX_SCAN).
SELECT id, lang, title, round(array_cosine_distance(v, embed('a new frog species in the jungle')), 3) AS distance
FROM article_vectors
ORDER BY array_cosine_distance(v, embed('a new frog species in the jungle'))
LIMIT 3;
