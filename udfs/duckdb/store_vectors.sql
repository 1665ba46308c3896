-- Store vectors with their provenance, so you always know which model made them, and only
-- compare vectors made by the same model.
--   polyemb sql --db vectors.duckdb -f udfs/duckdb/store_vectors.sql
CREATE OR REPLACE TABLE article_vectors AS
    SELECT id, lang, title, embed(title) AS embedding, embedding_model() AS model
    FROM 'udfs/data/articles.csv';

-- A Parquet copy keeps the vectors and the model column.
COPY article_vectors TO 'article_vectors.parquet' (FORMAT parquet);

-- Later: search only vectors made by the model loaded now. Parquet has no fixed-size array
-- type, so DuckDB reads the vectors back as FLOAT[] lists: compare them with list_cosine_similarity
-- (or cast, e.g. embedding::FLOAT[768]).
SELECT title, round(list_cosine_similarity(embedding, embed('bread recipe')), 3) AS score
FROM read_parquet('article_vectors.parquet')
WHERE model = embedding_model()
ORDER BY score DESC
LIMIT 3;
