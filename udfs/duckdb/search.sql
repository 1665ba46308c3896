-- Semantic search, across languages: the headlines closest in meaning to an English query,
-- whatever language they are written in.
--   polyemb sql -f udfs/duckdb/search.sql          (run from the repository root)
-- embed('...') with a constant argument is computed once per query, not once per row.
SELECT
    lang,
    title,
    round(array_cosine_similarity(embed(title), embed('heavy snow blocks roads in the mountains')), 3) AS score
FROM 'udfs/data/articles.csv'
ORDER BY score DESC
LIMIT 5;
