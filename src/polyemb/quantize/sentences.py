"""Sentences int8 runs once at load time to fix the range of the activations it keeps in int8.

Written for this purpose (not taken from any dataset): eight sentences in each of the 11
languages of the multilingual STS benchmark, short and long, everyday and technical, with
numbers, names and questions, so that the ranges cover what a multilingual model sees.
"""

from __future__ import annotations

__all__ = ["SENTENCES"]

SENTENCES: tuple[str, ...] = (
    # English
    "A man is playing a guitar on the street.",
    "The quarterly report shows revenue up 12% to $4.3 billion, driven by cloud services.",
    "Where can I find the nearest train station?",
    "Two dogs are running through a field of tall grass.",
    "The committee postponed its vote until the new safety rules had been reviewed by experts.",
    "Heat the oil, add the onions and stir for five minutes.",
    "Researchers in Oslo measured how quickly glaciers melted between 1990 and 2020, and found "
    "that the rate had nearly doubled in the last decade of the study.",
    "OK.",
    # German
    "Eine Frau schneidet Gemüse in der Küche.",
    "Der Zug nach München hat heute etwa zwanzig Minuten Verspätung.",
    "Wie viel kostet eine Fahrkarte für Erwachsene?",
    "Die Regierung kündigte an, die Steuern für kleine Unternehmen im nächsten Jahr zu senken.",
    "Kinder spielen Fußball im Park.",
    "Nach langen Verhandlungen einigten sich beide Seiten auf einen Vertrag über drei Jahre, "
    "der höhere Löhne und kürzere Arbeitszeiten vorsieht.",
    "Das Update behebt einen Fehler beim Speichern großer Dateien.",
    "Danke schön!",
    # Spanish
    "Un hombre está montando a caballo en la playa.",
    "El precio del petróleo subió un 3% después del anuncio.",
    "¿A qué hora abre la biblioteca los domingos?",
    "Los científicos descubrieron una nueva especie de rana en la selva amazónica.",
    "La niña lee un libro debajo de un árbol.",
    "El ayuntamiento aprobó un plan para ampliar las líneas de autobús y reducir el tráfico en "
    "el centro de la ciudad antes del verano.",
    "Instale la versión 2.1 del controlador y reinicie el equipo.",
    "Hola, ¿qué tal?",
    # French
    "Un chat dort sur le canapé.",
    "Le gouvernement a présenté son budget pour l'année prochaine.",
    "Pouvez-vous m'indiquer le chemin de la gare ?",
    "Les élèves ont visité le musée d'histoire naturelle avec leur professeur.",
    "Une femme joue du piano dans une salle de concert.",
    "Après trois jours de pluie, la rivière est sortie de son lit et plusieurs villages ont dû "
    "être évacués pendant la nuit.",
    "Le logiciel compresse les images sans perte de qualité visible.",
    "Merci beaucoup.",
    # Italian
    "Un uomo sta tagliando l'erba in giardino.",
    "La partita è finita due a uno per la squadra di casa.",
    "Quanto tempo ci vuole per arrivare a Roma in treno?",
    "Il museo ha riaperto dopo un lungo restauro durato quattro anni.",
    "Due bambini costruiscono un castello di sabbia.",
    "Secondo l'ultimo rapporto, la disoccupazione giovanile è scesa al 20 per cento, il livello "
    "più basso dal 2008.",
    "Il server non risponde: controllare la connessione di rete.",
    "Buongiorno a tutti.",
    # Dutch
    "Een vrouw fietst langs de gracht.",
    "De gemeente bouwt een nieuwe brug over de rivier.",
    "Hoe laat vertrekt de laatste bus naar Utrecht?",
    "Een jongen gooit een bal naar zijn hond.",
    "Volgens de weerdienst wordt het morgen zonnig met temperaturen rond de twintig graden.",
    "Het bedrijf heeft vorig jaar meer dan tweehonderd nieuwe medewerkers aangenomen, vooral in "
    "de afdelingen onderzoek en klantenservice.",
    "Sla het bestand op voordat je het programma afsluit.",
    "Tot ziens!",
    # Polish
    "Mężczyzna gra na skrzypcach na scenie.",
    "Ceny mieszkań w Warszawie wzrosły w tym roku o osiem procent.",
    "Gdzie jest najbliższa apteka?",
    "Dzieci bawią się na placu zabaw obok szkoły.",
    "Pies śpi przed kominkiem.",
    "Po wielu latach badań naukowcy opracowali szczepionkę, która chroni przed kilkoma "
    "odmianami wirusa jednocześnie.",
    "Aby zresetować hasło, kliknij link wysłany na adres e-mail.",
    "Dzień dobry.",
    # Portuguese
    "Uma mulher está a cozinhar arroz com feijão.",
    "O presidente viajou para Lisboa para uma reunião com ministros europeus.",
    "Quanto custa um café com leite?",
    "Um grupo de turistas tira fotografias em frente à catedral.",
    "O menino está a andar de bicicleta na rua.",
    "Com a chegada das chuvas, os agricultores da região esperam uma colheita muito melhor do "
    "que a do ano passado.",
    "A aplicação sincroniza os contactos a cada quinze minutos.",
    "Boa noite!",
    # Russian
    "Мужчина читает газету в кафе.",
    "Цены на электроэнергию вырастут с первого января.",
    "Как пройти к ближайшей станции метро?",
    "Две девочки рисуют мелом на асфальте.",
    "Кошка сидит на подоконнике и смотрит в окно.",
    "После долгих переговоров стороны подписали соглашение о строительстве новой железной "
    "дороги между двумя городами.",
    "Программа автоматически создаёт резервную копию базы данных каждую ночь.",
    "Спасибо!",
    # Chinese
    "一个男人正在公园里跑步。",
    "今年第三季度公司的利润增长了百分之十五。",
    "请问去火车站怎么走？",
    "两个孩子在海边堆沙堡。",
    "一只小狗在草地上追着球跑。",
    "经过多年的研究，科学家们终于找到了一种更便宜、更环保的电池材料。",
    "请在安装新版本之前备份您的数据。",
    "谢谢。",
    # Japanese
    "女性が台所で料理をしている。",
    "明日の東京は晴れで、最高気温は二十五度の予想です。",
    "駅までの道を教えていただけますか。",
    "子供たちが公園でサッカーをしている。",
    "猫がソファの上で寝ている。",
    "長い交渉の末、両国は貿易に関する新しい協定に署名し、関税を段階的に引き下げることで合意した。",
    "設定を変更した後は、アプリを再起動してください。",
    "おはようございます。",
)
