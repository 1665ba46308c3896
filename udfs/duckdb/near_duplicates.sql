-- Near-duplicate detection: pairs of rows whose meaning is nearly the same. With a multilingual
-- model, translations of one headline are near-duplicates of each other.
--   polyemb sql -f udfs/duckdb/near_duplicates.sql
-- Lower the threshold for more (looser) pairs; a.id < b.id lists each pair once.
WITH articles AS (
    SELECT id, lang, title, embed(title) AS v FROM 'udfs/data/articles.csv'
)
SELECT
    a.id AS id_a, a.lang AS lang_a, a.title AS title_a,
    b.id AS id_b, b.lang AS lang_b, b.title AS title_b,
    round(array_cosine_similarity(a.v, b.v), 3) AS score
FROM articles AS a
JOIN articles AS b ON a.id < b.id
WHERE array_cosine_similarity(a.v, b.v) >= 0.8
ORDER BY score DESC;
