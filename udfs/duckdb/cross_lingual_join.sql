-- Cross-lingual join: each English headline with the closest headline in another language.
--   polyemb sql -f udfs/duckdb/cross_lingual_join.sql
-- Vectors are computed once per row in the CTE, then compared pairwise.
WITH articles AS (
    SELECT id, lang, title, embed(title) AS v FROM 'udfs/data/articles.csv'
)
SELECT
    en.title AS english,
    other.lang,
    other.title AS match,
    round(array_cosine_similarity(en.v, other.v), 3) AS score
FROM articles AS en
JOIN articles AS other ON en.lang = 'en' AND other.lang <> 'en'
QUALIFY row_number() OVER (PARTITION BY en.id ORDER BY array_cosine_similarity(en.v, other.v) DESC) = 1
ORDER BY score DESC;
